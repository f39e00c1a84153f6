import pytest

from e2e import train_resume_predict


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_mean_teacher_trains_resumes_and_predicts(ssl_env, tmp_path, configuration):
    checkpoint = train_resume_predict(ssl_env, "nnUNetTrainerMeanTeacher", configuration, tmp_path)
    weights = checkpoint["network_weights"]
    assert any(k.startswith("teacher.") for k in weights) and any(k.startswith("student.") for k in weights)
    assert {"sup", "cons", "cons_weight"} <= set(checkpoint["logging"])

"""All nnunet-ssl trainers. nnU-Net finds them by class name through ``nnunet_ssl/_ext``."""
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher

__all__ = ["nnUNetTrainerSSLBase", "nnUNetTrainerMeanTeacher"]

"""All nnunet-ssl trainers. nnU-Net finds every name in ``__all__`` by class name through ``nnunet_ssl/_ext``.

Importing them (as nnU-Net's trainer search does in ``nnUNetv2_train``) makes an uncaught SSLConfigError print as
one message instead of a traceback (see :mod:`nnunet_ssl.errors`).
"""
from nnunet_ssl.errors import install_excepthook
from nnunet_ssl.trainers.base import nnUNetTrainerSSLBase
from nnunet_ssl.trainers.bcp import nnUNetTrainerBCP, nnUNetTrainerBCP_paper
from nnunet_ssl.trainers.cmems import nnUNetTrainerCMEMS
from nnunet_ssl.trainers.cps import nnUNetTrainerCPS, nnUNetTrainerCPS_paper
from nnunet_ssl.trainers.dmd import nnUNetTrainerDMD, nnUNetTrainerDMD_paper
from nnunet_ssl.trainers.lefed import nnUNetTrainerLeFeD, nnUNetTrainerLeFeD_paper
from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher
from nnunet_ssl.trainers.pseudo_label import nnUNetTrainerPseudoLabel
from nnunet_ssl.trainers.uadct import nnUNetTrainerUADCT, nnUNetTrainerUADCT_paper
from nnunet_ssl.trainers.uamt import nnUNetTrainerUAMT, nnUNetTrainerUAMT_paper
from nnunet_ssl.trainers.unimatch import nnUNetTrainerUniMatch

install_excepthook()

__all__ = sorted(name for name in dir() if name.startswith("nnUNetTrainer") and name != "nnUNetTrainerSSLBase")

# The only module in the folder that nnU-Net's ``nnUNet_extTrainer`` search scans. It re-exports the trainers with
# absolute imports so the classes keep living in their real, picklable modules (see hook/nnunet_ssl_autoregister.py).
from nnunet_ssl.trainers import *  # noqa: F401,F403

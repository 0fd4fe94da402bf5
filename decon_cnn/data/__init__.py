from decon_cnn.data.cifar import CIFARDataModule
from decon_cnn.data.synthetic import SyntheticDataModule
from decon_cnn.data.transforms import build_transforms

__all__ = ["CIFARDataModule", "SyntheticDataModule", "build_transforms"]

"""Models Genesis pretraining (Zhou et al., MICCAI 2019 / MedIA 2021, arXiv:2004.07882;
official code: MrGiovanni/ModelsGenesis): a 3D U-Net restores CT cubes from four transforms."""

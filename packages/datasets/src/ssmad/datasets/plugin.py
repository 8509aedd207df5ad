"""ssmad-datasets plugin: registers this package's components."""

from ssmad.core import hookimpl

from .demo import DemoConfig, build_demo
from .folder import FolderConfig, build_folder
from .layouts import (
    BTADConfig,
    MTDConfig,
    MVTecConfig,
    NanoTWICEConfig,
    VisAConfig,
    build_btad,
    build_mtd,
    build_mvtec,
    build_nanotwice,
    build_visa,
)


@hookimpl
def ssmad_register(register):
    register("dataset", "mvtec", build_mvtec, config=MVTecConfig,
             summary="MVTec AD layout: <category>/train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png")
    register("dataset", "btad", build_btad, config=BTADConfig,
             summary="BTAD layout: <NN>/train/ok, test/ok, test/ko, ground_truth/ko/<stem>.png|.bmp")
    register("dataset", "visa", build_visa, config=VisAConfig,
             summary="VisA with its split CSV (split_csv/1cls.csv: object,split,label,image,mask)")
    register("dataset", "mtd", build_mtd, config=MTDConfig,
             summary="Magnetic-tile defect: MT_<class>/Imgs/<stem>.jpg + .png mask; MT_Free split 4:1 by seed")
    register("dataset", "nanotwice", build_nanotwice, config=NanoTWICEConfig,
             summary="NanoTWICE SEM nanofibres: Normal/, Anomalous/images, Anomalous/gt; Normal split 4:1 by seed")
    register("dataset", "folder", build_folder, config=FolderConfig,
             summary="Your own folders: normal (train), test_normal, abnormal, masks (or <stem>_mask.* beside)")
    register("dataset", "demo", build_demo, config=DemoConfig,
             summary="Offline demo textures (brick, grass, gravel) with scratches, dents, holes and stains")

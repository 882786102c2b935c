"""mmlib: multimodal breast-lesion classification (mammography + ultrasound + clinical data).

The library behind the executable compendium in ``book/``. Modules follow the paper:

- :mod:`mmlib.schema`      the cohort manifest and the modality names (one input format)
- :mod:`mmlib.imaging`     reading PNG/JPEG/TIFF/DICOM, lesion ROI crops
- :mod:`mmlib.cohort`      loading and validating a manifest
- :mod:`mmlib.synth`       the synthetic paired cohort with known ground truth
- :mod:`mmlib.splits`      patient-level stratified cross-validation and the internal test split
- :mod:`mmlib.data`        multimodal samples and fastai DataLoaders, feature caching
- :mod:`mmlib.encoders`    timm image encoders, offline ImageNet weights
- :mod:`mmlib.models`      CUF-MT, AMW-CNN, MM-ABMIL, CNN-LSTM and baselines (a registry)
- :mod:`mmlib.learner`     fastai Learners, callbacks, safe model folders
- :mod:`mmlib.metrics`, :mod:`mmlib.stats`  metrics, CIs, DeLong, McNemar, calibration
- :mod:`mmlib.experiment`  cross-validation, internal test, ablations, missing modalities
- :mod:`mmlib.importers`   public collections to manifests
"""

__version__ = "0.1.0"

"""Train and evaluate a VAE with the estimator of muprop.py and the prior of sparse_prior.py, which lie
beside this file: ``python docs/examples/train_extended.py`` (seconds, on the embedded ``digits``)."""

import muprop  # noqa: F401  (registers the estimator "muprop")
import sparse_prior  # noqa: F401  (registers the prior "sparse")

from discrete_vae.cli import main
from discrete_vae.config import TrainConfig
from discrete_vae.train import train

# the Python API: a TrainConfig names them like any registered estimator and prior
config = TrainConfig.of(dataset="digits", latent="16", binary=True, estimator="muprop", prior="sparse",
                     prior_options={"p": 0.05}, hidden=(64, 32), steps=300, out="runs/muprop-sparse")
result = train(config, progress=False)
print(result["nll"])  # validation NLL bound of the discrete model

# dvae's entry point, in this process, knows them too: its flags, and a run folder that names them
main(["eval", "runs/muprop-sparse", "--samples", "100", "--split", "valid"])

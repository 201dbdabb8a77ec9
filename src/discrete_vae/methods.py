"""``--model NAME``: named methods, each a preset of posterior + estimator (+ posterior options).

Every method of the seed papers is one registration. ``--posterior`` and ``--estimator`` override a
method's choices (``--model gs --estimator rloo`` trains the categorical posterior with RLOO); a
method's option defaults (``kl``, ``prior_temperature``) apply where the config leaves them unset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .posteriors.dvae import MODELS as DVAE_MODELS
from .posteriors.igr import KINDS as IGR_KINDS
from .registry import Registry


@dataclass(frozen=True)
class Method:
    """``posterior`` and ``estimator`` names, and defaults for the options left unset."""

    posterior: str
    estimator: str
    defaults: dict[str, Any] = field(default_factory=dict)
    help: str = ""
    fixed: tuple[str, ...] = ()  # defaults the method insists on (another value is an error)

    def check(self, name: str, values: dict[str, Any]) -> None:
        """A one-line error where ``values`` (option names to values) set a default the method insists on to
        another value."""
        for key in self.fixed:
            given = values.get(key)
            if given not in ("auto", None, self.defaults[key]):
                raise ConfigError(f"--model {name} uses --{key.replace('_', '-')} {self.defaults[key]}, not "
                                  f"{given}; for other settings use --model {self.posterior_default_model}")

    @property
    def posterior_default_model(self) -> str:
        return {"categorical": "gs"}.get(self.posterior, self.posterior)


METHODS: Registry = Registry("model")
METHODS.register("gs")(Method("categorical", "gs", help="Gumbel-Softmax, analytic KL (Jang et al. 2017)"))
METHODS.register("st-gs")(Method("categorical", "st-gs", help="straight-through Gumbel-Softmax"))
# ExpGS (the IGR paper's baseline): Gumbel-Softmax scored in log space with the relaxed (ExpConcrete) KL, the
# prior temperature the IGR repository's 0.5
METHODS.register("expgs")(Method("categorical", "gs", {"kl": "relaxed", "prior_temperature": 0.5},
                                 help="Gumbel-Softmax with the relaxed KL (Maddison et al. 2017)",
                                 fixed=("kl",)))
for _kind in IGR_KINDS:
    METHODS.register(f"igr-{_kind}")(Method(f"igr-{_kind}", "relaxed", help=f"IGR ({_kind}), Potapczynski "
                                            "et al. 2020"))
for _model in DVAE_MODELS:
    METHODS.register(_model)(Method(_model, "relaxed", help="DVAE family with an RBM prior (Rolfe 2017; "
                                    "Vahdat et al. 2018)"))

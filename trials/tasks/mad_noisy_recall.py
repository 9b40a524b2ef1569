"""MAD noisy in-context recall (Poli et al. 2024, athms/mad-lab
``generate_noisy_in_context_recall_instance``, multi-query).

In-context recall (``carvelab.trials.tasks.mad_in_context_recall``: the layout, the
scoring and how it maps MAD's framing) with noise. Vocabulary (``V = task.vocab_size``,
``M = task.noise_vocab_size``, ``S = V - M``, ``K = S // 2``): keys ``0 .. K-1``, values
``K .. S-1``, noise tokens ``S .. V-1``. Each pair before the final query is, with
probability ``p = task.frac_noise``, replaced by two noise tokens (uniform, with
replacement; never scored, and not a key occurrence); one of those pairs, uniform, is
always a real pair, so the final query has a key to ask for. Example with V = 12, M = 4
(keys 0-3, values 4-7, noise 8-11), T = 10; pair 1 is noise::

    inputs   2  5  9 11  2  5  3  4  2  5
    targets  -  -  -  -  5  -  -  -  5  -

MAD's baseline (configs/tasks/noisy-in-context-recall.yml): ``vocab_size = 32`` with
``noise_vocab_size = 16`` (16 keys and values, as in-context recall's baseline),
``seq_len = 128``, ``frac_noise = 0.2``, ``num_train_examples = 12800``, 1280 test
examples. Its vocabulary changes keep the 16 noise tokens (48, 80, 144 = 32, 64, 128 + 16);
all changes are in ``carvelab.trials.tasks.mad.MAD_SETTINGS``.
"""
from __future__ import annotations

from dataclasses import dataclass

from carvelab.trials.tasks.base import positive_field
from carvelab.trials.tasks.mad import check_fraction
from carvelab.trials.tasks.mad_in_context_recall import InContextRecallConfig, InContextRecallTask


@dataclass
class NoisyRecallConfig(InContextRecallConfig):
    name: str = "mad_noisy_recall"
    vocab_size: int = 32
    noise_vocab_size: int = 16     # noise tokens, the top of the vocabulary
    frac_noise: float = 0.2        # probability that a pair before the final query is noise

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_field(self, "noise_vocab_size")
        check_fraction(self, "frac_noise")


class NoisyRecallTask(InContextRecallTask):
    """In-context recall with pairs replaced by noise tokens (MAD)."""

    name = "mad_noisy_recall"
    Config = NoisyRecallConfig

    @staticmethod
    def noise_vocab_size(cfg: NoisyRecallConfig) -> int:
        return cfg.noise_vocab_size

    @staticmethod
    def frac_noise(cfg: NoisyRecallConfig) -> float:
        return float(cfg.frac_noise)

    def data_fields(self, cfg: NoisyRecallConfig) -> dict:
        return {**super().data_fields(cfg), "noise_vocab_size": cfg.noise_vocab_size,
                "frac_noise": float(cfg.frac_noise)}

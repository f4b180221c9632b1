"""Attention-head analyses in one place: the scores type, induction, previous-token and retrieval heads,
retrieval-head activity, the masking experiment and a head's attention pattern over a prompt."""

from layerscope.analyses.head_ablation import AblationReport, ablation_experiment
from layerscope.analyses.head_activity import HeadActivity, head_activity
from layerscope.analyses.head_pattern import AttentionPattern, attention_pattern
from layerscope.analyses.head_scores import RETRIEVAL_THRESHOLD, HeadScore, HeadScores, load_head_scores
from layerscope.analyses.induction import induction_scores, previous_token_scores, repeated_random_tokens
from layerscope.analyses.needles import Needle, build_tests
from layerscope.analyses.retrieval import (
    NeedleResult,
    copy_paste,
    needle_results,
    retrieval_from_results,
    retrieval_scores,
)

__all__ = [
    "RETRIEVAL_THRESHOLD",
    "AblationReport",
    "AttentionPattern",
    "HeadActivity",
    "HeadScore",
    "HeadScores",
    "Needle",
    "NeedleResult",
    "ablation_experiment",
    "attention_pattern",
    "build_tests",
    "copy_paste",
    "head_activity",
    "induction_scores",
    "load_head_scores",
    "needle_results",
    "previous_token_scores",
    "repeated_random_tokens",
    "retrieval_from_results",
    "retrieval_scores",
]

"""open_clip loading, the prompt methods (PromptedCLIP) and checkpoint import/export."""

from mmlens.models.checkpoints import (
    import_prompts,
    load_coop_checkpoint,
    load_ivlp_checkpoint,
    load_maple_checkpoint,
    load_prompts,
    save_prompts,
)
from mmlens.models.loading import LoadedCLIP, load_clip, register_config
from mmlens.models.prompted import METHODS, PromptedCLIP

__all__ = ["METHODS", "LoadedCLIP", "PromptedCLIP", "import_prompts", "load_clip", "load_coop_checkpoint",
           "load_ivlp_checkpoint", "load_maple_checkpoint", "load_prompts", "register_config", "save_prompts"]

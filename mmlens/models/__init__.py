"""open_clip loading, the prompt methods (PromptedCLIP) and checkpoint import/export."""

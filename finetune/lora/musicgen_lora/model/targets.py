"""Which decoder layers LoRA adapts: the default names and the pattern that keeps them inside the
decoder. No torch here: the parser reads the default for --help."""


# Decoder attention (self and cross) and FFN, as in the seeds' adapters. LoRA is kept off the T5 text
# encoder and EnCodec whatever names they use (model.lora.lora_target_regex).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_target_regex(target_modules) -> str:
    names = "|".join(sorted(set(target_modules)))
    # Module keys look like decoder.model.decoder.layers.3.self_attn.q_proj
    return rf"^(.*\.)?decoder\.model\.decoder\.layers\.\d+\.(.*\.)?({names})$"


# --adapter_type: PEFT's LoRA and the variants it applies to a decoder's nn.Linear, each saved as a
# plain PEFT folder. lora: W + (alpha/r)·BA; rslora: alpha/sqrt(r), so a higher rank is not damped;
# dora: a learned per-output magnitude times the direction of W + BA; loha: a Hadamard product of two
# low-rank pairs; lokr: a Kronecker product.
ADAPTER_TYPES = ("lora", "rslora", "dora", "loha", "lokr")
ADAPTER_NAMES = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr"}

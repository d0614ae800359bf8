"""Build a tiny random-weight transformers CLAP offline (tokenizer trained here), for --clap_model_path tests."""
import tempfile
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    ClapTextConfig,
    RobertaTokenizerFast,
)


def build_tiny_clap(out: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(["dark trap 808 beat lofi piano jazz drums chill music melody"] * 10, vocab_size=300,
                                min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(tmp)
        tok = RobertaTokenizerFast(vocab_file=f"{tmp}/vocab.json", merges_file=f"{tmp}/merges.txt")
    text = ClapTextConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, projection_dim=16, max_position_embeddings=64)
    audio = ClapAudioConfig(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                            hidden_size=64, projection_dim=16, window_size=8, spec_size=256)
    model = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)).eval()
    model.save_pretrained(out)
    # rand_trunc (one channel) as laion/clap-htsat-unfused uses.
    ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tok).save_pretrained(out)
    return out

"""Build a MusicGen checkpoint offline, with random weights, that loads exactly like a real one.

The folder holds config.json + model.safetensors + generation_config.json and a processor
(EnCodec feature extractor + T5 tokenizer trained here with sentencepiece), so
`MusicgenForConditionalGeneration.from_pretrained(DIR)` and `AutoProcessor.from_pretrained(DIR)`
take the same code path as for `facebook/musicgen-small`. Nothing is downloaded.

`tiny` trains on a CPU in seconds (4 codebooks of 64 codes at 50 Hz, 32 kHz, like the real one);
`small`, `medium` and `large` are those checkpoints' architectures (419.6 M decoder parameters for
small) for benchmarks and memory plans. `stereo=True` gives the musicgen-stereo layout: the same
mono codec, run once per channel, and a decoder of 2 x 4 = 8 codebooks interleaved [L0, R0, L1, ...]
(decoder.config.audio_channels = 2). Same --seed, same weights and tokenizer.

The LM heads start LM_HEAD_SCALE times larger than transformers' init: behind the decoder's final
LayerNorm, heads of std 0.02 cap every logit near +-1.3, so no adapter could make a confident
prediction and a learning test on such a model could barely fail. Argmax behaviour is unchanged;
the base loss sits above ln(vocab) instead of at it (random but confident guesses).
"""
import io
import os
from pathlib import Path

from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE
from musicgen_lora.core.outputs import atomic_dir, check_own_folder, output_lock, write_manifest

TOOL = "make_tiny_model.py"
LM_HEAD_SCALE = 16.0

SAMPLE_RATE = MUSICGEN_SAMPLE_RATE
# 32 kHz / (8*5*4*4) = 50 frames per second, as in musicgen-small.
UPSAMPLING = [8, 5, 4, 4]

SIZES = {
    "tiny": dict(
        decoder=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, vocab_size=64),
        text=dict(d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16),
        # codebook_size 64 at 50 Hz: 1.2 kbps -> int(1200 // (50 * 6)) = 4 codebooks.
        codec=dict(hidden_size=16, num_filters=4, codebook_size=64, codebook_dim=16,
                   target_bandwidths=[1.2], num_lstm_layers=1),
        text_vocab=None,  # the tokenizer's own size
        max_positions=1024,
    ),
    "small": dict(
        decoder=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096, vocab_size=2048),
        text=dict(d_model=768, num_layers=12, num_heads=12, d_ff=3072, d_kv=64),
        # codebook_size 2048 at 50 Hz: 2.2 kbps -> int(2200 // (50 * 11)) = 4 codebooks.
        codec=dict(hidden_size=128, num_filters=64, codebook_size=2048, codebook_dim=128,
                   target_bandwidths=[2.2], num_lstm_layers=2),
        text_vocab=32128,
        max_positions=2048,
    ),
}
# medium and large: wider, deeper decoders over the same T5-base text encoder and 32 kHz EnCodec
# (the hub's config.json files for facebook/musicgen-medium and -large).
SIZES["medium"] = {**SIZES["small"], "decoder": dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24,
                                                     ffn_dim=6144, vocab_size=2048)}
SIZES["large"] = {**SIZES["small"], "decoder": dict(hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
                                                    ffn_dim=8192, vocab_size=2048)}

# Text the tokenizer is trained on: the vocabulary of music descriptions.
_WORDS = """
a an the with and of in on for by to at from slow fast mid tempo upbeat downbeat relaxed energetic calm chill
dreamy dark bright warm cold heavy soft loud quiet gentle aggressive melancholic happy sad epic cinematic
ambient lofi lo-fi hip hop trap drill boom bap jazz jazzy blues rock pop electronic techno house edm dubstep
synthwave orchestral classical piano guitar bass sub 808 drums drum kick snare hi-hat hihat hats clap claps
percussion strings violin cello synth synthesizer pad pads lead arpeggio arpeggiated chords chord melody
melodic rhythm rhythmic groove groovy beat beats bpm loop vinyl crackle tape saturation reverb delay echo
distorted clean acoustic electric organ rhodes keys flute saxophone trumpet brass choir vocal vocals
chopped sample samples sampled swing shuffle four floor half time double rolling bouncing steady sparse
dense minimal layered low high register tone tones pulse pulses noise texture plucked bell bells marimba
mallet sine square sawtooth wave bassline sliding slides glide rain night city late study sleep focus
sunset summer winter morning evening road drive driving dance club festival street underground vintage
modern retro futuristic 80s 90s 70s uk us atlanta memphis west east coast style genre track song tune
instrumental music piece intro outro build drop break bridge verse hook catchy repetitive hypnotic
"""


def _tokenizer_corpus():
    words = _WORDS.split()
    lines = []
    # Deterministic sentences: every word appears in several contexts.
    for i in range(len(words)):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(8)))
        lines.append(f"{words[i]} music with {words[(i + 5) % len(words)]} and {words[(i + 11) % len(words)]}")
    return lines


def train_tokenizer(vocab_size: int = 200):
    """Train a small sentencepiece unigram model (T5 conventions: pad 0, eos 1, unk 2)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    model_io = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_tokenizer_corpus()),
        model_writer=model_io,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model_io.getvalue())
    # transformers 5 builds T5's tokenizer from (piece, score) pairs; ids keep sentencepiece's order.
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def build_config(size: str, text_vocab: int, stereo: bool = False):
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    spec = SIZES[size]
    dec = spec["decoder"]
    text = T5Config(vocab_size=spec["text_vocab"] or text_vocab, **spec["text"],
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    codec = EncodecConfig(
        sampling_rate=SAMPLE_RATE, audio_channels=1, upsampling_ratios=UPSAMPLING,
        use_causal_conv=False, use_conv_shortcut=False, normalize=False,
        chunk_length_s=None, overlap=None, **spec["codec"],
    )
    vocab = dec["vocab_size"]
    channels = 2 if stereo else 1
    decoder = MusicgenDecoderConfig(
        **dec, num_codebooks=codec.num_quantizers * channels, audio_channels=channels,
        max_position_embeddings=spec["max_positions"],
        pad_token_id=vocab, bos_token_id=vocab, decoder_start_token_id=vocab,
        dropout=0.1, activation_function="gelu",
    )
    # Stereo checkpoints run the mono codec once per channel: codec codebooks x channels = decoder's.
    assert codec.num_quantizers * channels == decoder.num_codebooks, "EnCodec codebooks x channels != decoder's"
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())
    config.decoder_start_token_id = vocab
    config.pad_token_id = vocab
    # Marks a test checkpoint: its loss sits at ln(vocab) by construction, which the review must not
    # mistake for the misaligned-label failure a pretrained model shows there.
    config.random_weights_test_model = True
    return config


def init_codebooks(model, seed: int):
    """Give EnCodec's codebooks real entries.

    transformers creates them as zeros (a trained codec gets them from k-means on data); left so,
    every clip encodes to code 0 and every code sequence decodes to the same sound. As EnCodec's
    k-means init does, seed each residual codebook with encoder frames, here of synthetic tones and
    noise, so different audio gives different codes and different codes give different audio.
    """
    import torch

    codec = model.audio_encoder
    g = torch.Generator().manual_seed(seed)
    sr = codec.config.sampling_rate
    size = codec.config.codebook_size
    clips, seconds = 12, 4  # 12 x 4 s x 50 Hz = 2400 frames >= 2048 codes
    t = torch.arange(sr * seconds) / sr
    freqs = 40 * 2 ** (torch.rand(clips, 3, 1, generator=g) * 6)  # 40 Hz .. 2.5 kHz
    tones = torch.sin(2 * torch.pi * freqs * t).sum(1) / 3
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * torch.rand(clips, 1, generator=g) * 4 * t)
    noise = torch.randn(clips, t.numel(), generator=g) * torch.rand(clips, 1, generator=g) * 0.3
    audio = (tones * envelope * torch.rand(clips, 1, generator=g) + noise).unsqueeze(1)
    with torch.no_grad():
        residual = codec.encoder(audio)  # (B, D, T) before quantisation
        for layer in codec.quantizer.layers:
            frames = residual.permute(0, 2, 1).reshape(-1, residual.shape[1])
            pick = torch.randperm(frames.shape[0], generator=g)[:size]
            book = layer.codebook
            book.embed.copy_(frames[pick])
            book.embed_avg.copy_(frames[pick])
            book.cluster_size.fill_(1.0)
            residual = residual - layer.decode(layer.encode(residual))


def melody_config(config):
    """The MusicGen-Melody layout of a text-only config: a decoder-only LM (no cross-attention) whose
    prefix is [chroma (chroma_length frames of 12 bins, projected), text states] (transformers'
    MusicgenMelodyConfig; facebook/musicgen-melody's values: 12 bins, 235 frames ~ 30 s)."""
    from transformers import MusicgenMelodyConfig, MusicgenMelodyDecoderConfig

    dec = {k: v for k, v in config.decoder.to_dict().items()
           if k not in ("model_type", "architectures", "transformers_version")}
    melody = MusicgenMelodyConfig(text_encoder=config.text_encoder.to_dict(),
                                  audio_encoder=config.audio_encoder.to_dict(),
                                  decoder=MusicgenMelodyDecoderConfig(**dec).to_dict(), num_chroma=12,
                                  chroma_length=235)
    melody.decoder_start_token_id = config.decoder_start_token_id
    melody.pad_token_id = config.pad_token_id
    melody.random_weights_test_model = True
    return melody


# What facebook/musicgen-melody's preprocessor_config.json holds. Its MusicgenMelodyProcessor (and
# feature extractor) need torchaudio, which cannot be installed here: the file is written as the hub
# has it so that loading meets what a real melody checkpoint gives (musicgen_lora/audio/chroma.py computes
# the same features without torchaudio).
MELODY_PREPROCESSOR = {"feature_extractor_type": "MusicgenMelodyFeatureExtractor", "feature_size": 12,
                       "sampling_rate": SAMPLE_RATE, "hop_length": 4096, "n_fft": 16384, "num_chroma": 12,
                       "chunk_length": 30, "padding_side": "left", "padding_value": 0.0,
                       "processor_class": "MusicgenMelodyProcessor", "return_attention_mask": True,
                       "stem_indices": [3, 2]}


def build(output_dir: str, size: str = "tiny", seed: int = 0, overwrite: bool = False, stereo: bool = False,
          melody: bool = False) -> Path:
    """Write the checkpoint to output_dir (built beside it and renamed: a kill never leaves half a
    model). An existing folder is replaced only with `overwrite` and only when this script wrote it.
    melody: a MusicGen-Melody checkpoint (musicgen-melody / -stereo-melody with `stereo`)."""
    import json

    import torch
    from transformers import (
        EncodecFeatureExtractor,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
        MusicgenProcessor,
    )

    out = Path(output_dir)
    with output_lock(out, TOOL):
        check_own_folder(out, TOOL, overwrite=overwrite, flag="--output_dir", what="a test model")
        with atomic_dir(out, owner=TOOL) as tmp:
            torch.manual_seed(seed)
            tokenizer = train_tokenizer()
            config = build_config(size, text_vocab=len(tokenizer), stereo=stereo)
            if melody:
                config = melody_config(config)
            model = (MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration)(config)
            model.eval()
            init_codebooks(model, seed)
            with torch.no_grad():
                for head in model.decoder.lm_heads:
                    head.weight.mul_(LM_HEAD_SCALE)
            gen = model.generation_config
            vocab = config.decoder.vocab_size
            gen.decoder_start_token_id = vocab
            gen.pad_token_id = vocab
            gen.bos_token_id = vocab
            gen.do_sample = True
            gen.guidance_scale = 3.0
            gen.top_k = 250
            gen.max_length = 1500
            model.save_pretrained(tmp)
            if melody:
                tokenizer.save_pretrained(tmp)
                (Path(tmp) / "preprocessor_config.json").write_text(json.dumps(MELODY_PREPROCESSOR, indent=2))
            else:
                processor = MusicgenProcessor(
                    feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE),
                    tokenizer=tokenizer,
                )
                processor.save_pretrained(tmp)
            write_manifest(tmp, TOOL, os.listdir(tmp), size=size, seed=seed, stereo=stereo, melody=melody)
    return out

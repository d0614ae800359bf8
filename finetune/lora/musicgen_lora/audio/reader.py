"""Reading audio: any format to float32 at the model's rate and channel count, whole or in pieces.

Channels follow the model (`to_channels`, the one rule): a mono model gets the mean of the source's
channels; a stereo model gets a stereo source as it is and a mono one up-mixed L = R, as
transformers does (a source of more than two channels is mixed down to mono first, then up-mixed:
its speaker layout is unknown).

Training reads a clip in pieces (`AudioPieces`): piece j holds the source samples of
[j * P, (j + 1) * P) seconds of output (P = the codec's piece length, about 30 s), decoded,
set to the model's channels and resampled on its own. EnCodec encodes each piece on its own too
(model.codec.encode_pieces), so the codes of frame t depend only on the piece holding it. That gives:
  - memory that follows the piece, not the file: a one-hour clip costs what a 30 s one does;
  - random access: a training window reads only the one or two pieces under it;
  - one definition of a clip's codes, whichever path computes them (the code cache encodes every
    piece of the clip once; uncached training encodes the pieces under its window): same tokens.
A clip no longer than one piece is exactly the whole-file decode + resample + encode.

Formats soundfile cannot seek in (some m4a/mp3 through librosa's fallback decoders) are decoded
whole once; only those cost memory in proportion to their length.

Data preparation reads a whole track as a stream instead (`stream_audio`): soundfile blocks through
one soxr stream, concatenating to exactly what `load_audio` returns (same resampler, same length), so
its memory does not grow with the track. A format soundfile cannot open is decoded whole, and only up
to MAX_WHOLE_SECONDS: a longer one is refused (`NotStreamable`) rather than risking running out of memory.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from musicgen_lora.audio.librosa_import import load_librosa
from musicgen_lora.core.common import UserError

# Every released MusicGen codec (musicgen-small ... -large, stereo, melody) runs at 32 kHz. The one
# home of that number: data preparation writes at this rate, and tools without a model at hand
# (test_dataset.py without --model_path, --score_only) assume it; with a model, its codec's rate wins.
MUSICGEN_SAMPLE_RATE = 32000
MUSICGEN_HOP_LENGTH = 640  # 32 kHz / 50 frames per second

# About this many seconds of audio per piece: longer than any training window people use (15-30 s),
# short enough that decoding + resampling + encoding one costs a few hundred MB at most.
PIECE_SECONDS = 30.0
RESAMPLER = "soxr_hq"


# A header declaring fewer samples per second than this is damaged, not audio: 0 Hz divides by zero in
# the resampler and 1 Hz asks it for 32,000 output samples per input one (bad_alloc, or a segfault).
MIN_SOURCE_RATE = 4000
# stream_audio decodes about this many samples (all channels) per block: 1 MB of float32, ~3 s of
# 44.1 kHz stereo; the soxr stream, the cut and the encoder then hold a few blocks at most.
BLOCK_SAMPLES = 1 << 18
# A file soundfile cannot open (m4a through audioread/ffmpeg) is decoded whole; longer than this, it is
# refused instead of filling memory (20 min of 48 kHz stereo float32: 0.46 GB, about twice that while
# decoding and resampling).
MAX_WHOLE_SECONDS = 20 * 60


def piece_samples(sample_rate: int, hop_length: int) -> int:
    """Output samples per piece: a whole number of codec frames (so pieces never split a frame)."""
    return hop_length * max(1, round(PIECE_SECONDS * sample_rate / hop_length))


# What an unreadable file's error line tells the user to do (a training clip's; load_audio's `fix`
# says another, e.g. for a melody file).
DATA_FIX = "remove it from the metadata"


def _decode_error(path, e, fix: str = DATA_FIX) -> UserError:
    why = f"{type(e).__name__}: {e}" if str(e).strip() else f"{type(e).__name__}: no decoder reads it"
    return UserError(f"{path}: cannot decode audio ({why}); re-export it as WAV/FLAC or {fix}")


def _check_rate(path, sample_rate, fix: str = DATA_FIX) -> None:
    if not sample_rate >= MIN_SOURCE_RATE:
        raise UserError(f"{path}: the header declares a sample rate of {sample_rate:g} Hz (under {MIN_SOURCE_RATE} Hz: "
                        f"a damaged header, not audio); re-export it or {fix}")


def _check(path, wav: np.ndarray, fix: str = DATA_FIX) -> np.ndarray:
    if wav.size == 0:
        raise UserError(f"{path}: audio file is empty; {fix}")
    if not np.all(np.isfinite(wav)):
        raise UserError(f"{path}: audio holds NaN/inf samples; re-export it")
    return wav


def resample(wav: np.ndarray, source_rate: int, sample_rate: int) -> np.ndarray:
    """Resample along the last axis ((n,) or (C, n))."""
    if source_rate == sample_rate:
        return wav
    librosa = load_librosa()

    return librosa.resample(wav, orig_sr=source_rate, target_sr=sample_rate, res_type=RESAMPLER, axis=-1)


def to_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """(C_source, n) -> (channels, n) by the module's rule: mono = mean; stereo = as is, or L = R."""
    if wav.shape[0] == channels:
        return wav
    mono = wav.mean(axis=0, keepdims=True)
    return mono if channels == 1 else np.repeat(mono, channels, axis=0)


def _sound_file(path) -> sf.SoundFile:
    """soundfile reading through an OS file descriptor: libsndfile does its own reads. A Python file object
    would have it call back into Python for each read, and cffi swallows a KeyboardInterrupt raised inside
    such a callback (Ctrl-C then ends in an unrelated error, not exit 130); a path given as str fails on
    names that are not valid UTF-8. On failure libsndfile has closed the descriptor."""
    return sf.SoundFile(os.open(path, os.O_RDONLY), closefd=True)


def _decode_whole(path: Path, fix: str = DATA_FIX, duration: float | None = None) -> tuple[np.ndarray, int]:
    """((C, n) float32, rate) of a whole file: soundfile, else librosa (slower; some mp3/m4a), which
    stops after `duration` seconds when given."""
    try:
        try:
            with _sound_file(path) as f:
                wav, sr = f.read(dtype="float32", always_2d=True), f.samplerate
            _check_rate(path, sr, fix)
            return wav.T, sr
        except (sf.LibsndfileError, RuntimeError, TypeError):
            librosa = load_librosa()

            wav, sr = librosa.load(str(path), sr=None, mono=False, duration=duration)
            _check_rate(path, sr, fix)
            return np.atleast_2d(wav), sr
    except FileNotFoundError:
        raise UserError(f"{path}: audio file not found") from None
    except UserError:
        raise
    except Exception as e:
        raise _decode_error(path, e, fix) from None


def load_audio(path, sample_rate: int, channels: int | None = 1, fix: str = DATA_FIX) -> np.ndarray:
    """Decode a whole file at sample_rate (for clips, not hours): (n,) mono float32 with channels=1,
    (channels, n) with 2 (to_channels), (C_source, n) as the file has them with None. fix: what an
    unreadable file's one-line error suggests."""
    path = Path(path)
    wav, sr = _decode_whole(path, fix)
    _check(path, wav, fix)
    if channels is not None:
        wav = to_channels(wav, channels)
    out = np.ascontiguousarray(resample(wav, sr, sample_rate), dtype=np.float32)
    return out[0] if channels == 1 else out


class NotStreamable(UserError):
    """A file soundfile cannot open, longer than MAX_WHOLE_SECONDS: refused rather than decoded whole."""


def stream_audio(path, sample_rate: int, block_samples: int = BLOCK_SAMPLES):
    """A whole file as consecutive (C_source, n) float32 blocks at sample_rate, the file's own channels:
    concatenated, exactly load_audio(path, sample_rate, channels=None) (checked in tests/test_data_prep.py).

    soxr's stream gives the samples of its one-shot call (which librosa.resample runs per channel), bit for
    bit, measured at 8-96 kHz and any block size; its output runs 0-1 samples short of librosa's length
    ceil(n * ratio), which librosa pads with zeros, as the end of this stream does. A file soundfile cannot
    open is decoded whole (up to MAX_WHOLE_SECONDS; longer: NotStreamable). Every failure -- an
    unreadable file, a damaged header, NaN samples, the resampler -- is a UserError naming the file."""
    path = Path(path)
    try:
        with _sound_file(path):
            streamable = True
    except FileNotFoundError:
        raise UserError(f"{path}: audio file not found") from None
    except Exception:
        streamable = False
    if not streamable:
        yield from _stream_whole(path, sample_rate)
        return
    try:
        with _sound_file(path) as f:
            _check_rate(path, f.samplerate)
            blocks = f.blocks(max(1, block_samples // f.channels), dtype="float32", always_2d=True)
            yield from _resampled(path, blocks, f.samplerate, f.channels, sample_rate)
    except UserError:
        raise
    except Exception as e:  # whatever a decoder or the resampler raises: this file's, not the run's
        raise _decode_error(path, e) from None


def _stream_whole(path: Path, sample_rate: int):
    wav, sr = _decode_whole(path, duration=MAX_WHOLE_SECONDS + 1)
    if wav.shape[-1] > MAX_WHOLE_SECONDS * sr:
        raise NotStreamable(f"{path}: longer than {MAX_WHOLE_SECONDS / 60:g} min in a format decoded whole (soundfile "
                            f"cannot read it in pieces): refused to bound memory; convert it to FLAC or WAV")
    _check(path, wav)
    try:
        yield np.ascontiguousarray(resample(wav, sr, sample_rate), dtype=np.float32)
    except Exception as e:
        raise _decode_error(path, e) from None


def _resampled(path: Path, blocks, source_rate: int, channels: int, sample_rate: int):
    """(C, n) blocks at sample_rate from (n, C) source blocks; librosa.resample's samples and length."""
    import soxr

    stream = None if source_rate == sample_rate else soxr.ResampleStream(
        source_rate, sample_rate, channels, dtype="float32", quality=RESAMPLER)
    count, held, emitted = 0, None, 0  # the latest output is held back: the end may trim it
    for block in blocks:
        if not np.all(np.isfinite(block)):
            raise UserError(f"{path}: audio holds NaN/inf samples; re-export it")
        count += len(block)
        out = block if stream is None else stream.resample_chunk(block, last=False)
        if len(out):
            if held is not None:
                emitted += len(held)
                yield np.ascontiguousarray(held.T)
            held = out
    if count == 0:
        raise UserError(f"{path}: audio file is empty; {DATA_FIX}")
    tail = [] if held is None else [held]
    if stream is not None:
        tail.append(stream.resample_chunk(np.zeros((0, channels), dtype=np.float32), last=True))
        # librosa.resample's length: ceil(n * ratio), padded with zeros (util.fix_length), same expression
        total = int(np.ceil(count * (float(sample_rate) / source_rate)))
    else:
        total = count
    last = np.concatenate(tail)[:max(0, total - emitted)]
    last = np.pad(last, ((0, total - emitted - len(last)), (0, 0)))
    if len(last):
        yield np.ascontiguousarray(last.T)


def audio_duration(path) -> float | None:
    """Duration in seconds from the header when cheap; None if unknown."""
    try:
        with _sound_file(path) as f:
            return f.frames / f.samplerate
    except Exception:
        return None


class AudioPieces:
    """A clip as fixed pieces of `piece` output samples, read one at a time (see module doc), each
    (channels, n): the model's channel count (1 mono, 2 stereo), whatever the file holds.

    num_samples: the clip's length at `sample_rate`, known from the header without decoding.
    """

    def __init__(self, path, sample_rate: int, piece: int, channels: int = 1):
        self.path, self.sample_rate, self.piece = Path(path), int(sample_rate), int(piece)
        self.channels = int(channels)
        self._whole = None
        try:
            with _sound_file(self.path) as f:
                self.source_rate, self.source_frames = int(f.samplerate), int(f.frames)
            seekable = self.source_frames > 0
            _check_rate(self.path, self.source_rate)
        except FileNotFoundError:
            raise UserError(f"{self.path}: audio file not found") from None
        except UserError:
            raise
        except Exception:
            seekable = False
        if not seekable:  # not seekable by soundfile: decode once, whole
            wav, sr = _decode_whole(self.path)
            self._whole = _check(self.path, wav)
            self.source_rate, self.source_frames = int(sr), wav.shape[-1]
        if self.source_frames == 0:
            raise UserError(f"{self.path}: audio file is empty; remove it from the metadata")
        # Source samples per piece: the same span of time as `piece` output samples.
        self.source_piece = max(1, round(self.piece * self.source_rate / self.sample_rate))
        self.num_pieces = math.ceil(self.source_frames / self.source_piece)
        last_source = self.source_frames - (self.num_pieces - 1) * self.source_piece
        self.last_length = max(1, math.ceil(last_source * self.sample_rate / self.source_rate))
        self.num_samples = (self.num_pieces - 1) * self.piece + self.last_length

    def length(self, j: int) -> int:
        return self.piece if j < self.num_pieces - 1 else self.last_length

    def read(self, j: int) -> np.ndarray:
        """Piece j: (channels, length(j)) float32 at sample_rate."""
        start, count = j * self.source_piece, self.source_piece
        if self._whole is not None:
            wav = self._whole[:, start:start + count]
        else:
            try:
                with _sound_file(self.path) as f:
                    f.seek(start)
                    wav = f.read(count, dtype="float32", always_2d=True).T
            except FileNotFoundError:
                raise UserError(f"{self.path}: audio file not found") from None
            except Exception as e:
                raise _decode_error(self.path, e) from None
        _check(self.path, wav)
        out = resample(to_channels(wav, self.channels), self.source_rate, self.sample_rate)
        n = self.length(j)
        out = out[:, :n] if out.shape[-1] >= n else np.pad(out, ((0, 0), (0, n - out.shape[-1])))  # resampler: +-1
        return np.ascontiguousarray(out, dtype=np.float32)

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at sample_rate, (channels, n), from the pieces that hold them (each
        decoded and resampled exactly as read(j) does, so every caller sees the same samples)."""
        start, stop = max(0, int(start)), min(self.num_samples, int(stop))
        if stop <= start:
            return np.zeros((self.channels, 0), dtype=np.float32)
        first, last = start // self.piece, (stop - 1) // self.piece
        wav = np.concatenate([self.read(j) for j in range(first, last + 1)], axis=-1)
        return wav[:, start - first * self.piece:stop - first * self.piece]

    def pieces_for_frames(self, first_frame: int, num_frames: int, hop_length: int) -> range:
        """The pieces that hold code frames [first_frame, first_frame + num_frames)."""
        frames_per_piece = self.piece // hop_length
        first = min(first_frame // frames_per_piece, self.num_pieces - 1)
        last = min((first_frame + max(num_frames, 1) - 1) // frames_per_piece, self.num_pieces - 1)
        return range(first, last + 1)

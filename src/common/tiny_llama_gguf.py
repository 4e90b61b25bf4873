"""A tiny Llama-architecture GGUF that the repository makes itself: the test model of the causal-LM code paths.

    bazel run //src/common:make_tiny_llama_gguf      # rewrites src/common/testdata/tiny_llama.gguf

It has the shapes of llama2.c's stories260K (vocabulary 512, hidden 64, 5 layers, 8 query and 4 key/value heads,
feed-forward 172: 292,800 parameters), a sentencepiece-style BPE vocabulary learned here from the shipped
instruction set (3 control tokens, the 256 byte tokens, then merged pieces and single characters, scored like
sentencepiece's), and random fp32 weights (normal, std 0.02) from a fixed seed, so the same code writes the same
bytes. Like stories260K and other llama2.c exports it sets the padding and separator token ids to 0xFFFFFFFF,
which transformers rejects unless the importer repairs them (src/common/gguf_import.py): that repair stays tested.

The file is committed (tests read it as a declared input in every Bazel mode and on remote workers, with no build
action to run first); tiny_llama_gguf_test checks that this module still writes exactly the committed bytes.
"""

import collections
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

from src.common.errors import UserError, run_cli

# --- Everything that decides the file, in one place ---
ARCHITECTURE = "llama"
NAME = "tiny-llama (cpu-finetune test model)"
SHAPE = {  # stories260K's
    "vocab_size": 512,
    "hidden_size": 64,
    "num_layers": 5,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 172,
    "context_length": 2048,
    "rms_norm_eps": 1e-5,
}
SEED = 0
INIT_STD = 0.02  # transformers' initializer_range for Llama
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
NONE_TOKEN_ID = 0xFFFFFFFF  # what llama2.c exports write for "no such token"
WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁": a piece that starts a word
CORPUS = Path(__file__).parent / "data" / "instructions_small" / "train.jsonl"
COMMITTED = Path(__file__).parent / "testdata" / "tiny_llama.gguf"  # runfiles or source tree
SOURCE_PATH = "src/common/testdata/tiny_llama.gguf"  # relative to the workspace, for `bazel run`


def corpus_texts(path: Path = CORPUS) -> list[str]:
    """Every instruction, input and output of the shipped instruction set."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        texts += [record[key] for key in ("instruction", "input", "output") if record[key]]
    return texts


def learn_pieces(texts: Iterable[str], num_pieces: int) -> tuple[list[str], list[str]]:
    """Sentencepiece-style BPE: (merged pieces in merge order, single characters by frequency).

    Words are whitespace-separated and start with "▁"; a merge joins the most frequent adjacent pair (ties broken by
    the pair itself, so the result is deterministic). Stops when merges and characters fill `num_pieces`.
    """
    words = collections.Counter(WORD_BOUNDARY + word for text in texts for word in text.split())
    char_counts = collections.Counter()
    for word, count in words.items():
        for char in word:
            char_counts[char] += count
    chars = sorted(char_counts, key=lambda c: (-char_counts[c], c))
    if len(chars) > num_pieces:
        raise ValueError(f"the corpus has {len(chars)} distinct characters, more than {num_pieces} pieces")
    segmented = {word: list(word) for word in words}
    merges: list[str] = []
    while len(merges) + len(chars) < num_pieces:
        pairs = collections.Counter()
        for word, parts in segmented.items():
            for left, right in zip(parts, parts[1:]):
                pairs[left, right] += words[word]
        if not pairs:
            break
        (left, right), _ = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        merged = left + right
        merges.append(merged)
        for word, parts in segmented.items():
            i, out = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            segmented[word] = out
    return merges, chars


def vocabulary(vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) in llama's sentencepiece layout: control tokens, bytes, merges, characters."""
    tokens = [UNK, BOS, EOS] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    scores = [0.0] * len(tokens)
    merges, chars = learn_pieces(corpus_texts(), vocab_size - len(tokens))
    for rank, piece in enumerate(merges + chars):  # sentencepiece scores: earlier pieces merge first
        tokens.append(piece)
        types.append(TokenType.NORMAL)
        scores.append(-float(rank))
    return tokens, scores, [int(t) for t in types]


def weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Random fp32 tensors under GGUF's llama names, matrices as (out features, in features)."""
    rng = np.random.default_rng(seed)
    hidden, inter = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    head_dim = hidden // SHAPE["num_heads"]
    kv = head_dim * SHAPE["num_kv_heads"]

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * INIT_STD).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    tensors = {"token_embd.weight": matrix(SHAPE["vocab_size"], hidden)}
    for i in range(SHAPE["num_layers"]):
        tensors |= {
            f"blk.{i}.attn_norm.weight": ones(hidden),
            f"blk.{i}.attn_q.weight": matrix(hidden, hidden),
            f"blk.{i}.attn_k.weight": matrix(kv, hidden),
            f"blk.{i}.attn_v.weight": matrix(kv, hidden),
            f"blk.{i}.attn_output.weight": matrix(hidden, hidden),
            f"blk.{i}.ffn_norm.weight": ones(hidden),
            f"blk.{i}.ffn_gate.weight": matrix(inter, hidden),
            f"blk.{i}.ffn_up.weight": matrix(inter, hidden),
            f"blk.{i}.ffn_down.weight": matrix(hidden, inter),
        }
    tensors |= {"output_norm.weight": ones(hidden), "output.weight": matrix(SHAPE["vocab_size"], hidden)}
    return tensors


def write(path: str | os.PathLike) -> Path:
    """Write the tiny Llama GGUF to `path` (the same bytes every time)."""
    path = Path(path)
    tokens, scores, types = vocabulary(SHAPE["vocab_size"])
    writer = GGUFWriter(str(path), ARCHITECTURE)
    writer.add_name(NAME)
    writer.add_context_length(SHAPE["context_length"])
    writer.add_embedding_length(SHAPE["hidden_size"])
    writer.add_feed_forward_length(SHAPE["intermediate_size"])
    writer.add_block_count(SHAPE["num_layers"])
    writer.add_head_count(SHAPE["num_heads"])
    writer.add_head_count_kv(SHAPE["num_kv_heads"])
    writer.add_rope_dimension_count(SHAPE["hidden_size"] // SHAPE["num_heads"])
    writer.add_layer_norm_rms_eps(SHAPE["rms_norm_eps"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(tokens.index(UNK))
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(EOS))
    # The llama2.c quirk: "no padding / separator token" written as an id outside the vocabulary.
    writer.add_sep_token_id(NONE_TOKEN_ID)
    writer.add_pad_token_id(NONE_TOKEN_ID)
    for name, tensor in weights().items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the committed file (under `bazel run`, in the source tree)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        raise UserError(f"make_tiny_llama_gguf takes no arguments (got {' '.join(argv)}); it rewrites {SOURCE_PATH}")
    root = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", Path(__file__).resolve().parents[2]))
    out = write(root / SOURCE_PATH)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

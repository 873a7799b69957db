#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/ (committed; scripts/fuzz.sh starts from them).

Standard library only. Run from anywhere: `python3 fuzz/make_seeds.py`; the GGUF seeds cut
from the real model need models/SmolLM2-135M-Instruct.Q4_1.gguf (or $LOWBIT_MODELS_DIR).

gguf/         the quant-types test fixture; the real model's first 4 KiB (a header truncated in
              the metadata); the real model cut small (all of its metadata with the vocabulary
              cut to its first 512 tokens and the merges among them, three tensors with their
              real data, fewer rows); hand-made v2/v3 files with every value type, nested arrays
              and non-default alignment.
safetensors/  the test fixture; hand-made files with every dtype, scalar and empty shapes,
              __metadata__ only, an empty header, and a header padded with spaces.
ct2/          hand-made model.bin files: binary version 6 with every dtype, int8 and int16
              weights with their scales, scalars and an alias; version 3 (item widths); the
              real Whisper tiny.en's first 4 KiB (header, a truncated variable).
config/       tests/fixtures/configs/*.toml, profiles/*.toml, and environment lines.
protocol/     the client frames of SPEC.md §3 and OpenAI-style request bodies.
"""

import json
import os
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
MODELS = Path(os.environ.get("LOWBIT_MODELS_DIR", ROOT / "models"))

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- GGUF -------------------------------------------------------------------------------

class Reader:
    def __init__(self, b):
        self.b, self.pos = b, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.b, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, ty):
        if ty == STR:
            return self.string()
        if ty == ARR:
            et, n = self.take("<I"), self.take("<Q")
            return (et, [self.value(et) for _ in range(n)])
        return self.take(SCALAR[ty])


def enc_str(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


def enc_value(ty, v):
    if ty == STR:
        return enc_str(v)
    if ty == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(enc_value(et, x) for x in items)
    return struct.pack(SCALAR[ty], v)


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims, ggml_type, data)]."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, ty, v in kvs:
        head += enc_str(k) + struct.pack("<I", ty) + enc_value(ty, v)
    data, infos = b"", b""
    for name, dims, gt, blob in tensors:
        data += b"\0" * (-len(data) % alignment)
        infos += enc_str(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", gt, len(data))
        data += blob
    out = head + infos
    return out + b"\0" * (-len(out) % alignment) + data


def real_model_seeds():
    path = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    b = path.read_bytes()
    write("gguf", "smollm-first-4k.gguf", b[:4096])
    r = Reader(b)
    assert r.b[:4] == b"GGUF"
    r.pos = 4
    version, n_t, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kvs = []
    for _ in range(n_kv):
        k = r.string().decode()
        ty = r.take("<I")
        kvs.append((k, ty, r.value(ty)))
    infos = []
    for _ in range(n_t):
        name = r.string().decode()
        dims = [r.take("<Q") for _ in range(r.take("<I"))]
        infos.append((name, dims, r.take("<I"), r.take("<Q")))
    align = dict((k, v) for k, _, v in kvs).get("general.alignment", 32)
    data_start = r.pos + (-r.pos % align)

    keep = 512
    tokens = dict((k, v) for k, _, v in kvs)["tokenizer.ggml.tokens"][1][:keep]
    vocab = set(tokens)
    small = []
    for k, ty, v in kvs:
        if ty == ARR and k in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                               "tokenizer.ggml.scores"):
            v = (v[0], v[1][:keep])
        elif ty == ARR and k == "tokenizer.ggml.merges":
            ok = []
            for m in v[1]:
                a, _, c = m.partition(b" ")
                if a in vocab and c in vocab and a + c in vocab:
                    ok.append(m)
            v = (v[0], ok)
        small.append((k, ty, v))

    # Block sizes and bytes of the types the model uses (F32, Q4_1, Q8_0, F16).
    sizes = {0: (1, 4), 1: (1, 2), 3: (32, 20), 8: (32, 34)}
    tensors = []
    for name in ("output_norm.weight", "token_embd.weight", "blk.0.attn_q.weight"):
        n, dims, gt, off = next(t for t in infos if t[0] == name)
        rows = 1 if len(dims) == 1 else 3
        block, nbytes = sizes[gt]
        row_bytes = dims[0] // block * nbytes
        blob = b[data_start + off:data_start + off + rows * row_bytes]
        tensors.append((n, [dims[0]] + ([rows] if len(dims) > 1 else []), gt, blob))
    write("gguf", "smollm-cut.gguf", gguf(small, tensors, version, align))


def hand_made_gguf():
    every = [
        ("general.architecture", STR, "llama"),
        ("t.u8", U8, 200), ("t.i8", I8, -3), ("t.u16", U16, 60000), ("t.i16", I16, -30000),
        ("t.u32", U32, 7), ("t.i32", I32, -7), ("t.f32", F32, 0.5), ("t.bool", BOOL, True),
        ("t.str", STR, b"\xff raw bytes"), ("t.u64", U64, 1 << 40), ("t.i64", I64, -(1 << 40)),
        ("t.f64", F64, 2.5),
        ("t.arr", ARR, (ARR, [(U32, [1, 2, 3]), (STR, ["a", "b"])])),
        ("general.alignment", U32, 64),
    ]
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    # Q4_0 and Q8_0 blocks of 32 values with an f16 scale of 1.0 (0x3c00).
    q4_0 = struct.pack("<H", 0x3C00) + bytes(range(16))
    q8_0 = struct.pack("<H", 0x3C00) + bytes(range(32))
    tensors = [("a", [4], 0, f32), ("q4", [32, 1], 2, q4_0), ("q8", [32], 8, q8_0),
               ("f16", [2, 2], 1, struct.pack("<4H", 0x3C00, 0xC000, 0x3800, 0))]
    write("gguf", "every-value-type-v3.gguf", gguf(every, tensors, 3, 64))
    write("gguf", "v2-tiny.gguf", gguf([("k.x", U32, 7)], [("t", [4], 0, f32)], 2))
    write("gguf", "no-tensors.gguf", gguf([("general.name", STR, "x")], []))
    tok = [
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.tokens", ARR, (STR, ["H", "e", "l", "o", "He", "ll", "Hell", "Hello",
                                             "<|im_start|>", "<|im_end|>"])),
        ("tokenizer.ggml.token_type", ARR, (I32, [1] * 8 + [3, 3])),
        ("tokenizer.ggml.merges", ARR, (STR, ["H e", "l l", "He ll", "Hell o"])),
        ("tokenizer.ggml.bos_token_id", U32, 8), ("tokenizer.ggml.eos_token_id", U32, 9),
    ]
    write("gguf", "tiny-gpt2-tokenizer.gguf", gguf(tok, []))
    spm = [
        ("tokenizer.ggml.model", STR, "llama"),
        ("tokenizer.ggml.tokens", ARR, (STR, ["<unk>", "<s>", "</s>", "\u2581", "a", "b",
                                             "\u2581a", "ab", "<0x41>"])),
        ("tokenizer.ggml.scores", ARR, (F32, [0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.7, 0.0])),
        ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3, 1, 1, 1, 1, 1, 6])),
        ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    write("gguf", "tiny-spm-tokenizer.gguf", gguf(spm, []))
    shutil.copy(ROOT / "core/tests/fixtures/quant_types.gguf", CORPUS / "gguf/quant-types.gguf")


# --- safetensors --------------------------------------------------------------------------

def safetensors(header, data=b"", pad=0):
    h = json.dumps(header, separators=(",", ":")).encode() + b" " * pad
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    shutil.copy(ROOT / "core/tests/fixtures/small.safetensors",
                CORPUS / "safetensors/small-fixture.safetensors")
    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
    header, data = {}, b""
    for name, size in sizes.items():
        n = 2 * size
        header[name.lower()] = {"dtype": name, "shape": [2], "data_offsets": [len(data), len(data) + n]}
        data += bytes(range(len(data) % 200, len(data) % 200 + n))
    write("safetensors", "every-dtype.safetensors", safetensors(header, data))
    write("safetensors", "scalar-and-empty.safetensors", safetensors({
        "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
        "e": {"dtype": "F16", "shape": [3, 0], "data_offsets": [4, 4]},
        "__metadata__": {"format": "pt"}}, struct.pack("<f", 1.5)))
    write("safetensors", "metadata-only.safetensors",
          safetensors({"__metadata__": {"a": "b", "c": "d"}}))
    write("safetensors", "empty-header.safetensors", safetensors({}))
    write("safetensors", "space-padded.safetensors", safetensors(
        {"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}},
        struct.pack("<4H", 0x3F80, 0xC000, 0x3F00, 0), pad=5))


# --- CTranslate2 model.bin --------------------------------------------------------------

def ct2_string(s):
    b = s.encode()
    return struct.pack("<H", len(b) + 1) + b + b"\0"


def ct2(variables, aliases=(), version=6, spec="WhisperSpec"):
    """variables: (name, shape, dtype id, data); layout of ctranslate2's model_spec.py."""
    out = struct.pack("<I", version) + ct2_string(spec) + struct.pack("<I", 1)
    out += struct.pack("<I", len(variables))
    widths = {0: 4, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2}
    for name, shape, dtype, data in variables:
        out += ct2_string(name) + struct.pack("<B", len(shape))
        out += b"".join(struct.pack("<I", d) for d in shape)
        if version >= 4:
            out += struct.pack("<BI", dtype, len(data))
        else:
            out += struct.pack("<BI", widths[dtype], len(data) // widths[dtype])
        out += data
    if version >= 3:
        out += struct.pack("<I", len(aliases))
        out += b"".join(ct2_string(a) + ct2_string(t) for a, t in aliases)
    return out


def ct2_seeds():
    every = [
        ("a/bf16", [2], 5, struct.pack("<2H", 0x3FC0, 0xC000)),
        ("a/f16", [2, 2], 4, struct.pack("<4e", 0.5, -0.25, 65504.0, 0.001)),
        ("a/f32", [3], 0, struct.pack("<3f", 1.0, -2.5, 3.25)),
        ("a/i32", [2], 3, struct.pack("<2i", -7, 123456)),
        ("dec/int16/weight", [2, 2], 2, struct.pack("<4h", 1000, -500, 2048, 0)),
        ("dec/int16/weight_scale", [], 0, struct.pack("<f", 1024.0)),
        ("dec/int8/weight", [2, 3], 1, struct.pack("<6b", 127, -127, 0, 10, 20, -30)),
        ("dec/int8/weight_scale", [2], 0, struct.pack("<2f", 127.0, 10.0)),
        ("dec/num_heads", [], 2, struct.pack("<h", 6)),
    ]
    write("ct2", "every-dtype.bin", ct2(every, [("dec/projection/weight", "dec/int8/weight")]))
    write("ct2", "version-3.bin", ct2(every[:3], version=3, spec="TransformerSpec"))
    write("ct2", "empty.bin", ct2([]))
    whisper = MODELS / "whisper-tiny.en/model.bin"
    if whisper.exists():
        write("ct2", "whisper-tiny-en-head.bin", whisper.read_bytes()[:4096])


# --- config and protocol ------------------------------------------------------------------

def config_seeds():
    for p in sorted((ROOT / "tests/fixtures/configs").glob("*.toml")):
        shutil.copy(p, CORPUS / "config" / p.name)
    for p in sorted((ROOT / "profiles").glob("*.toml")):
        shutil.copy(p, CORPUS / "config" / f"profile-{p.name}")
    write("config", "env-lines.txt", "\n".join([
        "LOWBIT_RUNTIME_BACKEND=cpu", "LOWBIT_RUNTIME_FALLBACK=off", "LOWBIT_RUNTIME_THREADS=4",
        "LOWBIT_QUANTIZATION_METHOD=int4", "LOWBIT_QUANTIZATION_GROUP_SIZE=64",
        "LOWBIT_GENERATION_TEMPERATURE=0.2", "LOWBIT_KV_CACHE_BITS=8", "LOWBIT_PLUGINS=a.so, b.so",
        "LOWBIT_RUNTIME_BAKEND=cpu", ""]))


def protocol_seeds():
    frames = {
        "config-typed.json": {"type": "config", "prompt": "Once upon a time", "max_tokens": 100,
                              "temperature": 0.7, "top_p": 0.9, "options": {"stream": True}},
        "config-untyped.json": {"prompt": "Hello", "maxTokens": 20, "temperature": 0.5,
                                "precision": "int4"},
        "control-stop.json": {"type": "control", "action": "stop"},
        "config-every-field.json": {"type": "config", "model": "SmolLM2-135M-Instruct.Q4_1",
                                    "prompt": ["one string"], "n_predict": 5, "topP": 0.5,
                                    "topK": 3, "seed": 42, "stop": ["\n", "."],
                                    "stream": False},
        "chat-completions.json": {"model": "SmolLM2 135M Instruct", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 8, "stream": True, "stop": "\n"},
        "completions.json": {"prompt": "The capital of France is", "max_tokens": 16,
                             "temperature": 0, "top_k": 1},
        "bad-types.json": {"type": "config", "prompt": 5, "max_tokens": -1, "temperature": "hot"},
        "unknown-type.json": {"type": "tokenize", "action": "go"},
    }
    for name, v in frames.items():
        write("protocol", name, json.dumps(v))
    write("protocol", "not-an-object.json", "[1, 2, 3]")
    write("protocol", "truncated.json", '{"type":"config","prompt":"Hel')


def main():
    # Overwrites its own seeds only: `regress-*` inputs and merged finds stay.
    for t in ("gguf", "safetensors", "ct2", "config", "protocol"):
        (CORPUS / t).mkdir(parents=True, exist_ok=True)
    hand_made_gguf()
    real_model_seeds()
    safetensors_seeds()
    ct2_seeds()
    config_seeds()
    protocol_seeds()


if __name__ == "__main__":
    main()

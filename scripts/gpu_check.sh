#!/usr/bin/env bash
# GPU check of the fingerprint stage (issue 4, point 8). On a CUDA machine, in under 8 minutes:
#   1. one DeepSpeed bf16 training epoch of the ResNet-18 autoencoder (a real job through the
#      `local` executor with 1 GPU: train_encoder -> TrainJob -> deepspeed.initialize, NCCL),
#      with the paper's mse objective, then one shorter epoch each with the style and
#      contrastive objectives (issue 11),
#   2. extraction throughput on the GPU (run_shard from a Zarr store) against the encoder's raw
#      forward on in-memory GPU tensors,
#   3. a faiss-gpu IVF index build (GPU k-means) and search against exact Flat search,
#   4. the server's two backends on an exported bundle (small CNN at 28 px, ResNet-18 at 64 px):
#      the torch.export program on the GPU against onnxruntime on the CPU, agreement and img/s,
# then prints a short table. Not part of the test suite. Exit status: 0 when all four ran,
# 1 when a step failed or was skipped (faiss-gpu missing), 3 when there is no usable GPU.
#
#   bash scripts/gpu_check.sh                 # uses .venv/bin/python if present
#   PY=/path/to/python IMAGES=200000 bash scripts/gpu_check.sh
#   DEVICE=cpu IMAGES=2000 EPOCH_IMAGES=1000 VECTORS=20000 bash scripts/gpu_check.sh
#                                             # smoke run of the same code on the CPU (fp32,
#                                             # faiss-cpu); tests/test_gpu_check.py runs it
#                                             # with EXECUTOR=debug: step 1's trainings in the
#                                             # script's process, not a job process each
#
# Status: run on an NVIDIA H200 on 2026-12-04 (figures in docs/BENCHMARKS.md, "GPU check"), with
# faiss-cpu there, so step 3 was skipped. The CPU paths it calls are tested on every CI run
# (step 1's trainings there in the script's process, EXECUTOR=debug; the `local` job path has
# tests of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
IMAGES=${IMAGES:-100000}       # images in the look-alike store (28 px, RGB)
EPOCH_IMAGES=${EPOCH_IMAGES:-50000}
EPOCH_BATCH=${EPOCH_BATCH:-512}   # step 1's batch size (at most EPOCH_IMAGES less the held-out share)
OBJECTIVE_IMAGES=${OBJECTIVE_IMAGES:-$((EPOCH_IMAGES / 5))}   # per epoch of style/contrastive
VECTORS=${VECTORS:-1000000}
SERVE=${SERVE:-small_cnn:28,resnet18:64}   # step 4's models, ARCH:PIXELS
SERVE_S=${SERVE_S:-2}         # step 4: seconds of inference per throughput figure
LIMIT_S=${LIMIT_S:-450}        # whole script: stay under 8 minutes

DEVICE=${DEVICE:-cuda}         # cpu: the smoke run, no GPU needed
EXECUTOR=${EXECUTOR:-local}    # step 1's jobs: local (a process each); debug: in this process

fail() { echo "gpu_check: $*" >&2; exit 3; }

"$PY" -c 'import pomlia_hpc' 2>/dev/null \
    || fail "'$PY' cannot import pomlia_hpc: create the venv first (make venv)"
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || fail "DEVICE must be cuda or cpu, got '$DEVICE'"
[[ "$EXECUTOR" == local || "$EXECUTOR" == debug ]] \
    || fail "EXECUTOR must be local or debug, got '$EXECUTOR'"
if [[ "$DEVICE" == cuda ]]; then
command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi not found: this is not a CUDA machine"
nvidia-smi -L >/dev/null 2>&1 || fail "nvidia-smi sees no GPU (driver not loaded?)"
"$PY" - <<'EOF' || fail "torch sees no CUDA device (CPU-only torch build, or CUDA_VISIBLE_DEVICES empty)"
import sys, torch
sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

# The check's workspace (a store of IMAGES images, encoders, shards: ~0.7 GB at the smoke run's
# size) is removed when the script ends, killed by the limit included; KEEP=1 keeps it.
HOME_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pomlia-gpu-check-XXXXXX")
if [[ "${KEEP:-0}" == 1 ]]; then
    echo "gpu_check: workspace kept in $HOME_DIR"
else
    trap 'rm -rf "$HOME_DIR"' EXIT
fi

export IMAGES EPOCH_IMAGES EPOCH_BATCH OBJECTIVE_IMAGES VECTORS SERVE SERVE_S DEVICE EXECUTOR HOME_DIR
timeout --signal=KILL "$LIMIT_S" "$PY" - <<'EOF'
import json, os, sys, time, traceback
import numpy as np
import torch

from pomlia_hpc.cluster import Executor
from pomlia_hpc.data.api import ingest
from pomlia_hpc.data.store import open_version
from pomlia_hpc.data.synth import make_split
from pomlia_hpc.files import write_npz
from pomlia_hpc.fingerprint.autoencoder import to_input
from pomlia_hpc.fingerprint.extract import plan_extraction, run_shard
from pomlia_hpc.fingerprint.index import gpu_available, new_index, train_index
from pomlia_hpc.fingerprint.train import TrainConfig, load_encoder, train_encoder
from pomlia_hpc.registry import Registry
from pomlia_hpc.workspace import Workspace

n_images = int(os.environ["IMAGES"])
epoch_images = int(os.environ["EPOCH_IMAGES"])
epoch_batch = int(os.environ["EPOCH_BATCH"])
objective_images = int(os.environ["OBJECTIVE_IMAGES"])
n_vectors = int(os.environ["VECTORS"])
gpu = os.environ["DEVICE"] == "cuda"
dev = torch.device(os.environ["DEVICE"])


def sync() -> None:
    if gpu:
        torch.cuda.synchronize()


rows: list[tuple[str, str, str]] = []
ok = True
mse_trained = False  # step 2 extracts with the mse encoder "gpu_ae", or an untrained one

home = os.environ["HOME_DIR"]
ws = Workspace(home=__import__("pathlib").Path(home), db_url=f"sqlite:///{home}/registry.db",
               cluster_profile="local")
ws.create()
reg = Registry.open(ws.db_url)
x, y = make_split("pathmnist", min(n_images, 20_000), seed=0, size=28)
# repeats of the 20,000 generated images, each XOR-ed with its repeat number (distinct content)
reps = -(-n_images // len(x))
images = np.concatenate([x ^ np.uint8(i) for i in range(reps)])[:n_images]
labels = np.concatenate([y] * reps)[:n_images]
npz = write_npz(ws.tmp / "gpu.npz", {"train_images": images, "train_labels": labels},
                compress=False)
ingest(ws, reg, "gpuset", npz, class_names=[str(i) for i in range(9)])
print(f"store: {n_images} images of 28 px", flush=True)

# 1. one DeepSpeed bf16 epoch, as a job with one GPU
try:
    cfg = TrainConfig.model_validate({
        "encoder": {"latent_dim": 64}, "epochs": 1, "batch_size": epoch_batch,
        "precision": "bf16" if gpu else "fp32",
        "max_images_per_dataset": epoch_images, "num_workers": 4, "objective": "mse",
    })
    ex = Executor.from_profile(os.environ["EXECUTOR"], ws.jobs, reg)
    t0 = time.perf_counter()
    enc = train_encoder(reg, ws, "gpu_ae", ["gpuset"], cfg, executor=ex,
                        resources={"gpus_per_node": 1, "cpus_per_task": 8} if gpu else {})
    wall = time.perf_counter() - t0
    log = (ws.path("models", "encoders", "gpu_ae", "train_log.jsonl")).read_text().splitlines()
    epoch = json.loads(log[-1])
    rows.append(("DeepSpeed bf16 epoch" if gpu else "DeepSpeed fp32 epoch (CPU)", f"{epoch['images'] / epoch['seconds']:.0f} img/s",
                 f"loss {enc.loss_curve[-1]:.4f}; epoch {epoch['seconds']:.1f} s, job {wall:.0f} s"))
    mse_trained = True
except Exception:
    ok = False
    traceback.print_exc()
    rows.append(("DeepSpeed epoch", "FAILED", "see traceback above"))

# 1b. the other encoder objectives: one shorter epoch each (the held-out loss runs too)
for objective in ("style", "contrastive"):
    try:
        cfg = TrainConfig.model_validate({
            "encoder": {"latent_dim": 64}, "epochs": 1, "batch_size": 256 if gpu else 32,
            "precision": "bf16" if gpu else "fp32", "objective": objective,
            "max_images_per_dataset": objective_images, "num_workers": 4,
        })
        ex = Executor.from_profile(os.environ["EXECUTOR"], ws.jobs, reg)
        t0 = time.perf_counter()
        enc = train_encoder(reg, ws, f"gpu_{objective}", ["gpuset"], cfg, executor=ex,
                            resources={"gpus_per_node": 1, "cpus_per_task": 8} if gpu else {})
        wall = time.perf_counter() - t0
        log = ws.path("models", "encoders", f"gpu_{objective}", "train_log.jsonl").read_text()
        epoch = json.loads(log.splitlines()[-1])
        rows.append((f"{objective} objective epoch", f"{epoch['images'] / epoch['seconds']:.0f} img/s",
                     f"loss {enc.loss_curve[-1]:.4f}; held-out {epoch['val_loss']:.4f}; job {wall:.0f} s"))
    except Exception:
        ok = False
        traceback.print_exc()
        rows.append((f"{objective} objective epoch", "FAILED", "see traceback above"))

# 2. extraction on the GPU: end to end from Zarr vs raw forward on GPU tensors
try:
    if not mse_trained:  # go on with an untrained encoder
        from pomlia_hpc.fingerprint.autoencoder import Autoencoder
        from pomlia_hpc.fingerprint.train import encoder_dir, register_encoder, write_checkpoint
        cfg = TrainConfig.model_validate({"encoder": {"latent_dim": 64}})
        p = write_checkpoint(encoder_dir(ws, "gpu_ae") / "encoder.pt", Autoencoder(cfg.encoder),
                             cfg, [])
        register_encoder(reg, "gpu_ae", cfg, [], [], p)
    model, _ = load_encoder(reg, "gpu_ae")
    model = model.to(dev)
    store = open_version(reg, "gpuset")
    batches = [to_input(store.read_rows(i, min(n_images, i + 1024)), 28).to(dev)
               for i in range(0, n_images, 1024)]
    with torch.inference_mode():
        model.encode(batches[0]); sync()
        t0 = time.perf_counter()
        for b in batches:
            model.encode(b)
        sync()
        raw = n_images / (time.perf_counter() - t0)
    del batches
    plan = plan_extraction(reg, ws, "gpu_ae", ["gpuset"], shards=1, batch_size=1024, force=True)
    t0 = time.perf_counter()
    run_shard(plan.specs[0])
    e2e = n_images / (time.perf_counter() - t0)
    rows.append((f"extraction ({dev.type})", f"{e2e:.0f} img/s",
                 f"raw forward {raw:.0f} img/s; ratio {e2e / raw:.2f}"))
except Exception:
    ok = False
    traceback.print_exc()
    rows.append((f"extraction ({dev.type})", "FAILED", "see traceback above"))

# 3. faiss-gpu: IVF trained with GPU k-means, searched on the GPU, against exact Flat
try:
    import faiss
    if gpu and not gpu_available():
        raise RuntimeError("faiss has no GPU support here: pip install faiss-gpu (same version)")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1000, 64)).astype(np.float32) * 4
    xb = (centers[rng.integers(0, 1000, n_vectors)] + rng.normal(size=(n_vectors, 64))).astype(np.float32)
    xq = (centers[rng.integers(0, 1000, 10000)] + rng.normal(size=(10000, 64))).astype(np.float32)
    res = faiss.StandardGpuResources() if gpu else None
    on_dev = (lambda index: faiss.index_cpu_to_gpu(res, 0, index)) if gpu else (lambda index: index)
    nlist = 4096 if n_vectors >= 262144 else max(16, n_vectors // 256)
    flat = on_dev(faiss.IndexFlatL2(64))
    flat.add(xb)
    t0 = time.perf_counter(); _, truth = flat.search(xq, 10); flat_qps = len(xq) / (time.perf_counter() - t0)
    ivf = new_index(64, f"IVF{nlist},Flat", "l2")
    t0 = time.perf_counter()
    where = train_index(ivf, xb[:262144], use_gpu=gpu)
    ivf.add_with_ids(xb, np.arange(n_vectors, dtype=np.int64))
    build = time.perf_counter() - t0
    dev_ivf = on_dev(ivf)
    dev_ivf.nprobe = 32
    t0 = time.perf_counter(); _, got = dev_ivf.search(xq, 10); qps = len(xq) / (time.perf_counter() - t0)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    rows.append((f"faiss-{dev.type} IVF{nlist} nprobe 32", f"{qps:.0f} q/s",
                 f"recall@10 {recall:.3f}; Flat {flat_qps:.0f} q/s; trained on {where}, "
                 f"build {build:.1f} s, {n_vectors} vectors"))
except Exception as exc:
    ok = False
    traceback.print_exc()
    rows.append(("faiss-gpu", "FAILED/SKIPPED", str(exc)[:80]))

# 4. serving: the bundle's torch.export program (the server's GPU backend) against onnxruntime on
#    the CPU (its CPU backend): do they agree, and how fast is each on batches of images?
def images_per_s(logits, x: np.ndarray, seconds: float = float(os.environ["SERVE_S"])) -> float:
    logits(x); logits(x)  # warm-up: CUDA context, cuDNN algorithm choice, onnxruntime arenas
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        logits(x); n += len(x)
    return n / (time.perf_counter() - t0)


for arch, size in ((a, int(px)) for a, px in (c.split(":") for c in os.environ["SERVE"].split(","))):
    try:
        from pathlib import Path
        from pomlia_hpc.serve.demo import demo_bundle
        from pomlia_hpc.serve.runtime import load_runtime
        bundle = demo_bundle(Path(home) / f"serve-{arch}", name=f"gpu_{arch}", arch=arch,
                             image_size=size).bundle
        cpu_rt, dev_rt = load_runtime(bundle, "onnx"), load_runtime(bundle, "torch")
        x = np.random.default_rng(1).random((256, 3, size, size), dtype=np.float32)
        a, b = cpu_rt.logits(x), dev_rt.logits(x)
        agree = float((a.argmax(1) == b.argmax(1)).mean())
        rows.append((f"serve {arch} {size} px, {dev_rt.device}", f"{images_per_s(dev_rt.logits, x):.0f} img/s",
                     f"batch 256 ({images_per_s(dev_rt.logits, x[:32]):.0f} at 32); onnxruntime CPU "
                     f"{images_per_s(cpu_rt.logits, x[:32]):.0f} img/s at 32; max |logit diff| "
                     f"{float(np.abs(a - b).max()):.1e}, argmax agree {agree:.3f}"))
    except Exception:
        ok = False
        traceback.print_exc()
        rows.append((f"serve {arch}", "FAILED", "see traceback above"))

print()
name = torch.cuda.get_device_name(0) if gpu else "CPU smoke run"
print(f"GPU check ({name}, torch {torch.__version__})")
print(f"{'step':<30} {'result':<16} details")
for step, result, details in rows:
    print(f"{step:<30} {result:<16} {details}")
sys.exit(0 if ok else 1)
EOF

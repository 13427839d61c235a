#!/usr/bin/env bash
# One prepared call on a lent GPU machine (the `device` tool), writing what it measured to $OUT:
#   1. the AMMKD CIFAR-10 ablation on the GPU with longer teacher training (issue 8), resumable: a second call on the
#      same warm machine continues from runs/gpu/;
#   2. Navier-Stokes generation time at FNO's scale (N=1200, 64x64, nu=1e-3, T=50) on CUDA (issue 9);
#   3. AMMKD training time per epoch at 224 px on CUDA (issue 13).
# Needs: .whl/ (pydantic, open_clip and what they need, for the image's Python 3.12) and .gpu_data/cifar10/ carried.
# Usage there: bash benchmarks/gpu_session.sh SECONDS_FOR_THE_ABLATION
set -u
budget=${1:-520}
out=${OUT:-/tmp/out}
mkdir -p "$out" runs/gpu
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD KDMOBILE_CACHE=$PWD/runs/cache
if [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
fi
kd() { python3 -c 'import sys; from kdmobile.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -c 'import torch; print(torch.__version__)'; } > "$out/gpu.txt" 2>&1
data=$PWD/.gpu_data
if [ ! -f runs/gpu/side_done ]; then
  ( t0=$(date +%s); timeout 240 python3 -c 'import sys; from kdmobile.cli import main; sys.exit(main(sys.argv[1:]))' \
      data navier-stokes --out runs/gpu/ns_1200_64_t50.npy --n 1200 --res 64 --visc 1e-3 --t-final 50 \
      --batch-size 1200 --device cuda --no-progress > runs/gpu/ns_gen.log 2>&1
    echo "exit $? after $(( $(date +%s) - t0 )) s" >> runs/gpu/ns_gen.log
    timeout 240 python3 -c 'import sys; from kdmobile.cli import main; sys.exit(main(sys.argv[1:]))' \
      train ammkd --data "cifar10:$data/cifar10/cifar10_test.npz" --image-size 224 --max-train 2000 --max-test 200 \
      --teacher-epochs 1 --epochs 2 --device cuda --no-progress --out runs/gpu --name t224 \
      --set teacher_train.workers=3 --set train.workers=3 > runs/gpu/t224.log 2>&1 || true
    touch runs/gpu/side_done ) &
fi
timeout "$budget" python3 benchmarks/ammkd_ablation.py --dataset cifar10 --data-root "$data" --device cuda --tag gpu \
  --records runs/gpu/records.json --runs runs/gpu --jobs 12 --threads 1 --teacher-epochs 80 \
  --set teacher_train.workers=3 \
  --note "GPU run: teachers trained for 80 epochs (the ViT 120) instead of the CPU run's 30; students as on the CPU" \
  > runs/gpu/ablation.log 2>&1
echo "ablation exit $?" >> runs/gpu/ablation.log
wait
cp runs/gpu/records.json "$out/" 2>/dev/null
cp benchmarks/results/ammkd_ablation_cifar10_gpu.json benchmarks/results/ammkd_ablation_cifar10_gpu.md "$out/" 2>/dev/null
tar czf "$out/logs.tar.gz" runs/gpu/*.log runs/gpu/*/log.jsonl runs/gpu/*/metrics.json 2>/dev/null
tail -5 runs/gpu/ablation.log

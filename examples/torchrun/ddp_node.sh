#!/bin/bash
# One DDP run over several machines with torchrun, no scheduler (docs/scaling.md#several-machines): run this on
# every node at once, each with its own NODE_RANK; rank 0 writes the run.
#
#   node0$ NODE_RANK=0 MASTER_ADDR=node0 NNODES=2 NPROC_PER_NODE=8 examples/torchrun/ddp_node.sh --config strong
#   node1$ NODE_RANK=1 MASTER_ADDR=node0 NNODES=2 NPROC_PER_NODE=8 examples/torchrun/ddp_node.sh --config strong
#
# NODE_RANK       this node's rank, 0 to NNODES-1
# MASTER_ADDR     node 0's address, which every node reaches
# MASTER_PORT     a free port on node 0 (default 29500)
# NNODES          the number of nodes (default 2)
# NPROC_PER_NODE  processes per node: GPUs, or 1 on a CPU (default 1)
# DATA_DIR        the dataset's directory (default: the config's)
# TORCHRUN        the launcher (default: torchrun, as found on PATH)
# Arguments after the script's name go to fit (--trainer.accelerator cpu on machines without a GPU).
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK (0 on the first node)}" "${MASTER_ADDR:?set MASTER_ADDR to node 0s address}"
nnodes=${NNODES:-2}
nproc=${NPROC_PER_NODE:-1}
data=()
[ -n "${DATA_DIR:-}" ] && data=(--data.data_dir "$DATA_DIR")
exec "${TORCHRUN:-torchrun}" --nnodes "$nnodes" --node_rank "$NODE_RANK" --nproc_per_node "$nproc" \
  --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  -m fashion_cnn.fit --trainer.strategy ddp --trainer.devices "$nproc" --trainer.num_nodes "$nnodes" "${data[@]}" "$@"

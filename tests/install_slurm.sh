#!/usr/bin/env bash
# Installs a one-node-capable Slurm from the OS packages (Debian/Ubuntu: slurmctld, slurmd,
# slurm-client) when `slurmctld` is missing. Idempotent: does nothing when Slurm is there.
# Needs root (CI runs as root). Without root it only says what is missing; the Slurm tests
# then skip with that reason. Nothing is started here: tests/slurm_harness.py starts the
# daemons under a temporary folder and stops them by pid.
set -euo pipefail

if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[install_slurm] slurmctld/slurmd/sbatch missing and not root: not installing (the Slurm tests will skip)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_slurm] no apt-get here: install slurmctld, slurmd and the Slurm client by hand" >&2
  exit 1
fi
echo "[install_slurm] installing slurmctld slurmd slurm-client from the OS packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: no munge daemon setup, no mail server; the harness uses auth/none.
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client >/dev/null
# The Debian packages try to start the daemons through systemd/init; with no systemd here
# nothing runs, and the harness starts its own with its own config.
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null
echo "[install_slurm] installed slurm $(dpkg-query -W -f='${Version}' slurmctld 2>/dev/null || true)"

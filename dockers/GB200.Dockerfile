# Megatron MoE Bench image for NVIDIA GB200 NVL72 (Grace + Blackwell, sm_100, aarch64; build on an arm64 host or with --platform linux/arm64).
# Built only from public sources: the NGC PyTorch image (nvcr.io, no login needed), GitHub and PyPI.
# Every version below is a build argument with a pinned default; override with --build-arg.
#
#   docker build -f dockers/GB200.Dockerfile -t moe-bench:gb200 dockers/
#   enroot import -o moe-bench-gb200.sqsh dockerd://moe-bench:gb200
#
# then CONTAINER_IMAGE=/path/to/moe-bench-gb200.sqsh and CONTAINER_RUNTIME=pyxis in the cluster conf
# (docs/slurm.md). The suite itself is not copied in: jobs mount its checkout at run time.
ARG NGC_PYTORCH_TAG=26.07-py3
FROM nvcr.io/nvidia/pytorch:${NGC_PYTORCH_TAG}
# Declared again so the version file below can name it.
ARG NGC_PYTORCH_TAG

# Transformer Engine (git tag of NVIDIA/TransformerEngine; 2.18 is what Megatron-Core 0.19.2 tracks),
# Megatron-Core (PyPI) and the
# Megatron-LM checkout that provides pretrain_gpt.py (git tag of NVIDIA/Megatron-LM).
# The NGC 26.07 image carries CUDA 13, hence the cu13 wheels.
ARG TE_REF=v2.18
ARG MEGATRON_CORE_VERSION=0.19.2
ARG MEGATRON_LM_REF=core_v0.19.2
# DeepEP's hybrid-ep branch (DISPATCHER=hybridep, and DISPATCHER=deepep): a pinned commit.
ARG DEEPEP_REPO=https://github.com/deepseek-ai/DeepEP.git
ARG DEEPEP_REF=3f601f7ac1c062c46502646ff04c535013bfca00
ARG DEEPEP_BRANCH=hybrid-ep
# GPU architecture compiled for, and build parallelism.
ARG TORCH_CUDA_ARCH_LIST="10.0"
ARG NVTE_CUDA_ARCHS="100"
ARG MAX_JOBS=16
# Light Python dependencies of the suite and its tools, pinned.
ARG JINJA2_VERSION=3.1.6
ARG PYYAML_VERSION=6.0.2
ARG WANDB_VERSION=0.22.2
ARG NVIDIA_MATHDX_VERSION=25.1.1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# NGC images pin their own packages through PIP_CONSTRAINT; the pinned versions here replace some of them.
ENV PIP_CONSTRAINT="" \
    PIP_NO_CACHE_DIR=1 \
    MAX_JOBS=${MAX_JOBS} \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

# The suite's light dependencies, then Transformer Engine from source at a pinned tag (pip fetches
# its git submodules; nvidia-mathdx is one of its build dependencies).
RUN pip install --no-cache-dir \
        "jinja2==${JINJA2_VERSION}" "pyyaml==${PYYAML_VERSION}" "wandb==${WANDB_VERSION}" \
        "nvidia-mathdx==${NVIDIA_MATHDX_VERSION}" \
    && NVTE_FRAMEWORK=pytorch NVTE_CUDA_ARCHS="${NVTE_CUDA_ARCHS}" NVTE_BUILD_THREADS_PER_JOB=4 \
    pip install --no-cache-dir --no-build-isolation \
        "transformer_engine[pytorch] @ git+https://github.com/NVIDIA/TransformerEngine.git@${TE_REF}"

# Megatron-Core from PyPI (the bundled driver uses it) and the Megatron-LM checkout for ENTRY=pretrain_gpt
# (cluster conf MEGATRON_PATH=/opt/megatron-lm). The base image may ship its own copy: replace it.
RUN pip install --no-cache-dir --no-deps "megatron-core==${MEGATRON_CORE_VERSION}" \
    && rm -rf /opt/megatron-lm \
    && git clone --depth 1 --branch "${MEGATRON_LM_REF}" https://github.com/NVIDIA/Megatron-LM.git /opt/megatron-lm

# HybridEP lives on DeepEP's hybrid-ep branch; the same `deep_ep` package also serves DISPATCHER=deepep.
RUN git clone --branch "${DEEPEP_BRANCH}" "${DEEPEP_REPO}" /opt/deepep \
    && git -C /opt/deepep checkout "${DEEPEP_REF}" \
    && pip install --no-cache-dir --no-build-isolation /opt/deepep

# Versions, for the run manifest and for humans: `cat /opt/moe-bench-image.txt`.
RUN printf 'NGC_PYTORCH_TAG=%s\nTE_REF=%s\nMEGATRON_CORE_VERSION=%s\nMEGATRON_LM_REF=%s\nDEEPEP_BRANCH=%s\nDEEPEP_REF=%s\n' \
        "${NGC_PYTORCH_TAG}" "${TE_REF}" "${MEGATRON_CORE_VERSION}" "${MEGATRON_LM_REF}" "${DEEPEP_BRANCH}" "${DEEPEP_REF}" \
        > /opt/moe-bench-image.txt

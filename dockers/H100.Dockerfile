# Megatron MoE Bench image for NVIDIA H100 (Hopper, sm_90, x86_64).
# Built only from public sources: the NGC PyTorch image (nvcr.io, no login needed), GitHub and PyPI.
# Every version below is a build argument with a pinned default; override with --build-arg.
#
#   docker build -f dockers/H100.Dockerfile -t moe-bench:h100 dockers/
#   enroot import -o moe-bench-h100.sqsh dockerd://moe-bench:h100
#
# then CONTAINER_IMAGE=/path/to/moe-bench-h100.sqsh and CONTAINER_RUNTIME=pyxis in the cluster conf
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
# DeepEP (DISPATCHER=deepep): a commit of deepseek-ai/DeepEP main, built against NVSHMEM from PyPI.
ARG DEEPEP_REPO=https://github.com/deepseek-ai/DeepEP.git
ARG DEEPEP_REF=e02e4d2e1fbfdf09e02e870b6acc5831cbd11e39
ARG NVSHMEM_VERSION=3.4.5
# GPU architecture compiled for, and build parallelism.
ARG TORCH_CUDA_ARCH_LIST="9.0"
ARG NVTE_CUDA_ARCHS="90"
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

# DeepEP: NVSHMEM comes from its PyPI wheel (DeepEP's setup.py finds the nvidia.nvshmem package).
RUN pip install --no-cache-dir "nvidia-nvshmem-cu13==${NVSHMEM_VERSION}" \
    && git clone "${DEEPEP_REPO}" /opt/deepep \
    && git -C /opt/deepep checkout "${DEEPEP_REF}" \
    && pip install --no-cache-dir --no-build-isolation /opt/deepep

# Versions, for the run manifest and for humans: `cat /opt/moe-bench-image.txt`.
RUN printf 'NGC_PYTORCH_TAG=%s\nTE_REF=%s\nMEGATRON_CORE_VERSION=%s\nMEGATRON_LM_REF=%s\nDEEPEP_REF=%s\nNVSHMEM_VERSION=%s\n' \
        "${NGC_PYTORCH_TAG}" "${TE_REF}" "${MEGATRON_CORE_VERSION}" "${MEGATRON_LM_REF}" "${DEEPEP_REF}" "${NVSHMEM_VERSION}" \
        > /opt/moe-bench-image.txt

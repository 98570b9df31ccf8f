"""Development build of a subset of the operator library, into its own build folder.

    python scripts/dev_build.py --name norm csrc/cpu/instance_norm_act.cpp [csrc/cuda/instance_norm_act.cu]

csrc/ops.cpp (the schemas) and csrc/autograd/*.cpp (the autograd kernels) are always built in.
Prints the path of the built library; run tests against it with ``P2PHD_LIB=<path> pytest ...``.
Several developers can build different kernels side by side without touching the package's _C.so.
"""

import argparse
import os
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("sources", nargs="*")
    args = ap.parse_args()
    cuda = any(s.endswith(".cu") for s in args.sources)
    if cuda:
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    import glob

    import torch
    from torch.utils.cpp_extension import load

    build = os.path.join(ROOT, "build", f"dev-{args.name}")
    os.makedirs(build, exist_ok=True)
    site = os.path.dirname(os.path.dirname(torch.__file__))
    incs = [os.path.join(ROOT, "csrc")] + sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    # The schemas and the (device-independent) autograd kernels always: without the latter the ops would
    # have no gradients. Deduplicated, so naming them on the command line as well does no harm.
    always = [os.path.join(ROOT, "csrc", "ops.cpp")]
    always += sorted(glob.glob(os.path.join(ROOT, "csrc", "autograd", "*.cpp")))
    srcs = list(dict.fromkeys(always + [os.path.abspath(s) for s in args.sources]))
    # The code-generation flags the package build gets from Python's sysconfig (-fwrapv, -g, ...), so that a
    # development build compiles the loops as the package does.
    py_cflags = [f for f in (sysconfig.get_config_var("CFLAGS") or "").split() if not f.startswith("-W")]
    load(
        name=f"p2phd_dev_{args.name}",
        sources=srcs,
        extra_include_paths=incs,
        extra_cflags=py_cflags + ["-O3", "-fopenmp"] + (["-DP2PHD_WITH_CUDA=1"] if cuda else []),
        extra_cuda_cflags=["--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"],
        extra_ldflags=["-fopenmp"],
        build_directory=build,
        is_python_module=False,
        verbose=False,
    )
    lib = os.path.join(build, f"p2phd_dev_{args.name}.so")
    print(lib)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

// What this build of the operator library contains; the macros are set by setup.py / CMakeLists.txt.
#pragma once

#include <torch/version.h>

#if __has_include("p2phd_build_config.h")
#include "p2phd_build_config.h"
#endif

#include <sstream>
#include <string>

#ifndef P2PHD_WITH_CUDA
#define P2PHD_WITH_CUDA 0
#endif
#ifndef P2PHD_CUDA_ARCHS
#define P2PHD_CUDA_ARCHS ""
#endif
#ifndef P2PHD_CUDA_VERSION
#define P2PHD_CUDA_VERSION ""
#endif

namespace pix2pixhd_fast {

inline std::string build_info_json() {
  std::ostringstream s;
  s << "{\"cuda\": " << (P2PHD_WITH_CUDA ? "true" : "false") << ", \"cuda_archs\": \"" << P2PHD_CUDA_ARCHS
    << "\", \"cuda_version\": \"" << P2PHD_CUDA_VERSION << "\", \"torch_version\": \"" << TORCH_VERSION
    << "\"}";
  return s.str();
}

}  // namespace pix2pixhd_fast

// Runtime SIMD level: chosen once from the CPU (or RECFUSE_SIMD), changeable for tests.
#pragma once
#include <string>
#include <vector>

namespace recfuse {

enum class SimdLevel { Generic = 0, Avx2 = 1, Avx512 = 2 };

// Highest level this CPU supports (and this build compiled).
SimdLevel best_simd_level();
// The level in force: RECFUSE_SIMD if set (generic|avx2|avx512), else best_simd_level().
SimdLevel simd_level();
// Force a level; throws std::invalid_argument if the CPU cannot run it.
void set_simd_level(SimdLevel level);
SimdLevel parse_simd_level(const std::string& name);
const char* simd_level_name(SimdLevel level);
std::vector<SimdLevel> supported_simd_levels();
// Whether this CPU runs AVX512-BF16 (vdpbf16ps) beside avx512f/bw/vl, in an x86-64 build.
bool cpu_supports_avx512bf16();

// The one of three values (e.g. each level's kernel of a family) for the level in force.
// Static: files compiled with a level's flags include this header too, and none of their
// copies may be the one the linker keeps for every caller.
template <class T>
static inline T for_level(T generic, T avx2, T avx512) {
  switch (simd_level()) {
    case SimdLevel::Avx512: return avx512;
    case SimdLevel::Avx2: return avx2;
    default: return generic;
  }
}

}  // namespace recfuse

#include "recfuse/simd.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace recfuse {

namespace {

// A value as it may appear in an error message: bytes outside printable ASCII as \xNN, so
// that the message stays valid UTF-8 (pybind11 could not turn it into a Python str, and the
// error would lose its text).
std::string printable(const std::string& value) {
  std::string out;
  for (const unsigned char c : value) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  return out;
}

bool cpu_supports(SimdLevel level) {
#if defined(__x86_64__) || defined(_M_X64)
  switch (level) {
    case SimdLevel::Generic: return true;
    case SimdLevel::Avx2:
#ifdef RECFUSE_HAVE_AVX2
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
    case SimdLevel::Avx512:
#ifdef RECFUSE_HAVE_AVX512
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
      return false;
#endif
  }
  return false;
#else
  return level == SimdLevel::Generic;
#endif
}

SimdLevel initial_level() {
  const char* env = std::getenv("RECFUSE_SIMD");
  if (env != nullptr && *env != '\0') {
    SimdLevel wanted;
    try {
      wanted = parse_simd_level(env);
    } catch (const std::invalid_argument& error) {  // name the variable the value came from
      throw std::invalid_argument(std::string("RECFUSE_SIMD: ") + error.what());
    }
    if (!cpu_supports(wanted)) {
      throw std::invalid_argument(std::string("RECFUSE_SIMD=") + printable(env) +
                                  " is not supported by this CPU or build; supported up to " +
                                  simd_level_name(best_simd_level()));
    }
    return wanted;
  }
  return best_simd_level();
}

std::atomic<int>& current_level() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

}  // namespace

SimdLevel parse_simd_level(const std::string& name) {
  if (name == "generic") return SimdLevel::Generic;
  if (name == "avx2") return SimdLevel::Avx2;
  if (name == "avx512") return SimdLevel::Avx512;
  throw std::invalid_argument("SIMD level must be one of generic, avx2, avx512; got '" +
                              printable(name) + "'");
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Generic: return "generic";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512: return "avx512";
  }
  return "unknown";
}

SimdLevel best_simd_level() {
  if (cpu_supports(SimdLevel::Avx512)) return SimdLevel::Avx512;
  if (cpu_supports(SimdLevel::Avx2)) return SimdLevel::Avx2;
  return SimdLevel::Generic;
}

std::vector<SimdLevel> supported_simd_levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel level : {SimdLevel::Generic, SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (cpu_supports(level)) out.push_back(level);
  }
  return out;
}

bool cpu_supports_avx512bf16() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(RECFUSE_HAVE_AVX512)
  static const bool supported = [] {  // asked once: CPUID can trap to a hypervisor
    unsigned eax, ebx, ecx, edx;  // CPUID leaf 7, sub-leaf 1: EAX bit 5 is AVX512_BF16
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
    return ((eax >> 5) & 1u) != 0 && cpu_supports(SimdLevel::Avx512);
  }();
  return supported;
#else
  return false;
#endif
}

SimdLevel simd_level() { return static_cast<SimdLevel>(current_level().load()); }

void set_simd_level(SimdLevel level) {
  if (!cpu_supports(level)) {
    throw std::invalid_argument(std::string("SIMD level ") + simd_level_name(level) +
                                " is not supported by this CPU or build");
  }
  current_level().store(static_cast<int>(level));
}

}  // namespace recfuse

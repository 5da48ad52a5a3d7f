// The bfloat16 dense-layer kernel on AMX (tile registers; TDPBF16PS multiplies a 16 x 32
// bfloat16 tile of activations by a 16-pair x 16-column tile of weights into a 16 x 16
// float32 tile). Compiled with -mamx-tile -mamx-bf16 for this file only; chosen at run time
// when the CPU has amx_tile and amx_bf16 and Linux grants the process tile data
// (arch_prctl ARCH_REQ_XCOMP_PERM).
//
// NOTE: written against Intel's documentation and compiled, but never run: the machines this
// was developed on (AMD EPYC, Zen 4) have no AMX. Until it has run on a Sapphire Rapids or
// later CPU, "auto" never picks it; ask for it with kernel="amx".
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 64

namespace recfuse {
namespace kernels {
namespace amx {
#include "mlp_kernels_impl.inc"

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: C (16 x 16 float32, a 32 x 32 block); 4-5: A (16 rows x 32 bfloat16);
// 6-7: B (16 pair rows x 16 columns x 2 bfloat16). Every tile is 16 rows of 64 bytes.
template <MlpActivation A>
void layer_tiles(const MlpLayerArgs& g) {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
  alignas(64) float block[32][kMlpPanel];
  const uint16_t* a = static_cast<const uint16_t*>(g.A);
  const uint16_t* packed = static_cast<const uint16_t*>(g.packed);
  const int64_t a_stride = static_cast<int64_t>(g.lda) * 2;
  const int steps = (g.K + 31) / 32;
  for (int r0 = 0; r0 < g.rows; r0 += 32) {
    for (int p = 0; p < g.panels; ++p) {
      const uint16_t* panel = packed + p * g.panel_stride;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int s = 0; s < steps; ++s) {
        const uint16_t* a_top = a + static_cast<int64_t>(r0) * g.lda + s * 32;
        const uint16_t* b = panel + static_cast<int64_t>(s) * 16 * 2 * kMlpPanel;
        _tile_loadd(4, a_top, a_stride);
        _tile_loadd(5, a_top + 16 * static_cast<int64_t>(g.lda), a_stride);
        _tile_loadd(6, b, 2 * kMlpPanel * 2);
        _tile_loadd(7, b + 32, 2 * kMlpPanel * 2);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, &block[0][0], kMlpPanel * 4);
      _tile_stored(1, &block[0][16], kMlpPanel * 4);
      _tile_stored(2, &block[16][0], kMlpPanel * 4);
      _tile_stored(3, &block[16][16], kMlpPanel * 4);
      const int col = p * kMlpPanel;
      const int rows = g.rows - r0 < 32 ? g.rows - r0 : 32;
      for (int r = 0; r < rows; ++r) {
        const int row = r0 + r;
        V x0 = load(&block[r][0]) + load(g.add0[row] + col);
        V x1 = load(&block[r][kLanes]) + load(g.add0[row] + col + kLanes);
        const float* add1 = g.add1 != nullptr ? g.add1[row] : nullptr;
        if (add1 != nullptr) {
          x0 += load(add1 + col);
          x1 += load(add1 + col + kLanes);
        }
        x0 = activate<A>(x0);
        x1 = activate<A>(x1);
        if (g.c_bf16) {
          uint16_t* c = static_cast<uint16_t*>(g.C) + static_cast<int64_t>(row) * g.ldc + col;
          for (int j = 0; j < kLanes; ++j) {
            c[j] = to_bfloat16(x0[j]);
            c[kLanes + j] = to_bfloat16(x1[j]);
          }
        } else {
          float* c = static_cast<float*>(g.C) + static_cast<int64_t>(row) * g.ldc + col;
          store(c, x0);
          store(c + kLanes, x1);
        }
      }
    }
  }
  _tile_release();
}

void layer_amx(const MlpLayerArgs& g) {
  with_activation(g.activation, [&](auto a) { layer_tiles<decltype(a)::value>(g); });
}

}  // namespace
}  // namespace amx

MlpLayerFunction mlp_layer_amx() { return &amx::layer_amx; }

bool mlp_request_amx() {
  static const bool granted = [] {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool amx_bf16 = (edx >> 22) & 1u;
    const bool amx_tile = (edx >> 24) & 1u;
    if (!amx_bf16 || !amx_tile) return false;
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
}

}  // namespace kernels
}  // namespace recfuse

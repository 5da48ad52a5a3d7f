// The thread count that num_threads = 0 ("all cores") stands for in every native call.
#pragma once

#include <omp.h>

#include <algorithm>

namespace recfuse {

// OpenMP's default team size (OMP_NUM_THREADS, else the processors), but never more than the
// processors this process may run on: with OMP_NUM_THREADS=100000 the top-k packing asked
// libgomp for a team of 100000 and the interpreter crashed, where no call had asked for
// more than a few.
inline int default_threads() {
  return std::max(1, std::min(omp_get_max_threads(), omp_get_num_procs()));
}

// A call's num_threads: as requested, or default_threads() for 0.
inline int resolve_threads(int requested) { return requested > 0 ? requested : default_threads(); }

}  // namespace recfuse

// Grouping an event log into (user, item) pairs: the ingestion kernel behind
// recfuse.Interactions. The contract is recfuse.reference_data.group_events (Python).
//
// Events (user, item, value, time, multiplicity) are grouped by user, then by item; the
// events of one pair are combined into one stored value:
//   Sum:   Σ value          Max: max value
//   Last:  the value of the latest event (largest time, ties and no times: latest in input)
//   Count: Σ multiplicity
// Every pair also gets its number of events (Σ multiplicity) and its latest time. Values
// are accumulated in double and stored as float (the matrix users train on is float32).
#pragma once
#include <cstdint>
#include <vector>

namespace recfuse {

enum class Combine { Sum, Max, Last, Count };

struct GroupedPairs {
  std::vector<int64_t> indptr;   // n_users + 1 row offsets
  std::vector<int32_t> indices;  // item of each pair, ascending within a row
  std::vector<float> values;     // combined value of each pair
  std::vector<int32_t> counts;   // events (Σ multiplicity) of each pair
  std::vector<int64_t> times;    // latest time of each pair (empty without times)
};

// `values`, `times` and `multiplicity` may be null (value 1, no times, multiplicity 1).
// Throws std::invalid_argument for a user or item code out of range, or a pair with 2^31
// events or more.
GroupedPairs group_events(const int32_t* users, const int32_t* items, const double* values,
                          const int64_t* times, const int64_t* multiplicity, int64_t n_events,
                          int64_t n_users, int64_t n_items, Combine combine, int num_threads);

// One chunk of a column of byte strings in Arrow's layout: string s spans
// data[offsets[s], offsets[s + 1]). Exactly one of offsets32 (Arrow string/binary) and
// offsets64 (large_string/large_binary) is set; the offsets need not start at 0.
struct StringChunk {
  const uint8_t* data;
  int64_t data_size;  // bytes in data: every offset must lie in [0, data_size]
  const int32_t* offsets32;
  const int64_t* offsets64;
  int64_t length;  // strings in the chunk (offsets hold length + 1 entries)
};

struct FactorizedStrings {
  std::vector<int32_t> codes;  // per string: the rank of its value among the distinct values
  std::vector<int64_t> first;  // per distinct value, in rank order: where it first occurs
};

// Ids of a string column numbered in sorted order, as pandas.factorize(sort=True) numbers
// Python strings: values are hashed once, then only the distinct values are sorted
// (bytewise, shorter first on a common prefix; for UTF-8 this is code point order).
// Positions in `first` count across the chunks in order. Throws std::invalid_argument for
// offsets that decrease or leave the data, or more than 2^31 - 1 distinct values.
FactorizedStrings factorize_strings(const std::vector<StringChunk>& chunks);

}  // namespace recfuse

// The streaming checksum: XXH3-64 fed in pieces equals the one-shot value for
// every split, and both equal the published algorithm (reference values from the
// xxhash package for one fixed pattern at every length class); XXH64 too.
// XXH3-128 (the chunk keys' hash) likewise, fed in two pieces as the key chain feeds it.
#include <algorithm>
#include <random>
#include <vector>

#include "check.hpp"
#include "pykvstore/checksum.hpp"

using namespace pykvstore;

namespace {

struct Vector {
  std::size_t n;
  std::uint64_t xxh3, xxh64;
};

// data[i] = (i * 131 + 7) & 0xff; values from xxhash.xxh3_64_intdigest / xxh64_intdigest.
const Vector kReference[] = {
    {0u, 0x2d06800538d394c2ull, 0xef46db3751d8e999ull},
    {1u, 0x4c5cca45d0f4811full, 0xa96c7f0ce858bbb7ull},
    {3u, 0x6e3e2670e61106acull, 0xbed43740ee6332bbull},
    {4u, 0x5c4c63133443d03full, 0xfa212ae44b3bb23dull},
    {8u, 0xf9fd4dd0b04d78f5ull, 0x994b676b71ce94ddull},
    {9u, 0x7c20df9712c26edfull, 0x572b84c18b983af8ull},
    {16u, 0x86abf6baccea0858ull, 0x94ad0095e72b24d5ull},
    {17u, 0xb58bf5dc5022d071ull, 0x1464f2eff23b5fe1ull},
    {128u, 0x10d17f72c0ccba41ull, 0x0430e433b792e757ull},
    {129u, 0x1648bdc3db49d1a2ull, 0x1f9708e5a00618faull},
    {240u, 0xb6cfaf343fab81e6ull, 0xca0b65cc61295ca7ull},
    {241u, 0x956cae592c67279eull, 0x0ffefe0dfc875cf4ull},
    {1023u, 0xa94ffcd2254368e4ull, 0x4db3efaa15c421b1ull},
    {1024u, 0x70bd377d9574f4bbull, 0x5960af0c625acfb7ull},
    {1025u, 0x66c4487c41e127a7ull, 0xdbd366621190a655ull},
    {4103u, 0xcb98265b177d8e40ull, 0x8536c5215941513eull},
    {65549u, 0xae416f79588dd414ull, 0x4968c83280940fceull},
};

// The same pattern; values from xxhash.xxh3_128_intdigest (high, low).
struct Vector128 {
  std::size_t n;
  std::uint64_t high, low;
};
const Vector128 kReference128[] = {
    {0u, 0x99aa06d3014798d8ull, 0x6001c324468d497full},
    {1u, 0x495b62073ef70ca4ull, 0x4c5cca45d0f4811full},
    {3u, 0x390cdc5b4a895dd7ull, 0x6e3e2670e61106acull},
    {4u, 0xaa6e2f274640a3f4ull, 0x3d668af6f2a44d77ull},
    {8u, 0x6a86a3bda6af4e3dull, 0x61ddbe7f31a6100dull},
    {9u, 0x664c7ca18afd6255ull, 0x8c7b67fd458a936bull},
    {16u, 0x7f9a218b0425449aull, 0xe2ce54a7c19c730dull},
    {17u, 0x66fc23f6439dbd77ull, 0x8d96ef110fcdebb4ull},
    {128u, 0xaec730751478556cull, 0xff361dec1385710aull},
    {129u, 0x98cd36ccbb557926ull, 0x4545b3a09738e31aull},
    {240u, 0x5293e17bf553903dull, 0x3f2c53e72293711full},
    {241u, 0xb53840fe3fedf161ull, 0x956cae592c67279eull},
    {1023u, 0x0990de11f2b13621ull, 0xa94ffcd2254368e4ull},
    {1024u, 0xf69630613f24324dull, 0x70bd377d9574f4bbull},
    {1025u, 0x621af7b8277effa4ull, 0x66c4487c41e127a7ull},
    {4103u, 0x302d47501d38d541ull, 0xcb98265b177d8e40ull},
    {65549u, 0x23feed30ebc4e04eull, 0xae416f79588dd414ull},
};

std::vector<unsigned char> pattern(std::size_t n) {
  std::vector<unsigned char> d(n + 1);  // +1: data() of an empty vector may be null
  for (std::size_t i = 0; i < n; ++i) d[i] = static_cast<unsigned char>((i * 131 + 7) & 0xff);
  return d;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  for (const Vector& v : kReference) {
    auto d = pattern(v.n);
    CHECK_EQ(xxh3_64(d.data(), v.n), v.xxh3);
    CHECK_EQ(xxh64(d.data(), v.n), v.xxh64);
    // every split into two pieces (short inputs), random splits into up to 9 pieces
    if (v.n <= 300)
      for (std::size_t cut = 0; cut <= v.n; ++cut) {
        Xxh3 h;
        h.update(d.data(), cut);
        h.update(d.data() + cut, v.n - cut);
        CHECK_EQ(h.digest(), v.xxh3);
      }
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<std::size_t> cuts{0, v.n};
      for (unsigned k = rng() % 8; k > 0; --k) cuts.push_back(v.n ? rng() % (v.n + 1) : 0);
      std::sort(cuts.begin(), cuts.end());
      Xxh3 h;
      for (std::size_t i = 0; i + 1 < cuts.size(); ++i) h.update(d.data() + cuts[i], cuts[i + 1] - cuts[i]);
      CHECK_EQ(h.digest(), v.xxh3);
      CHECK_EQ(h.digest(), v.xxh3);  // digest() does not consume the state
    }
    // byte by byte across the 240-byte and stripe boundaries
    Xxh3 h;
    for (std::size_t i = 0; i < v.n; ++i) h.update(d.data() + i, 1);
    CHECK_EQ(h.digest(), v.xxh3);
  }
  for (const Vector128& v : kReference128) {
    auto d = pattern(v.n);
    Hash128 one = xxh3_128(d.data(), v.n);
    CHECK_EQ(one.high, v.high);
    CHECK_EQ(one.low, v.low);
    for (std::size_t cut = 0; cut <= v.n; cut += (v.n <= 300 ? 1 : 61)) {  // a parent key, then its chunk
      Xxh3 h;
      h.update(d.data(), cut);
      h.update(d.data() + cut, v.n - cut);
      Hash128 two = h.digest128();
      CHECK_EQ(two.high, v.high);
      CHECK_EQ(two.low, v.low);
    }
  }
  return pykvstore_test::finish("test_checksum");
}

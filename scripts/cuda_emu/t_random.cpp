// random.cu on the host: Philox4x32-10 against Random123's published known answers (kat_vectors),
// and rand_normal_philox's slabs (B slabs of per values, per not a multiple of 4) printed as bits,
// for a comparison with kernels.PhiloxRandn (go run scripts/cuda_emu/philox_ref.go prints the same).
#include "shim.h"
#include "../../kernels/cuda/random.cu"
#include "common_test.h"
static void kat(const char *what, unsigned c0, unsigned c1, unsigned c2, unsigned c3, unsigned k0, unsigned k1,
                unsigned w0, unsigned w1, unsigned w2, unsigned w3) {
    unsigned c[4] = {c0, c1, c2, c3};
    philox4x32_10(c, k0, k1);
    bool ok = c[0] == w0 && c[1] == w1 && c[2] == w2 && c[3] == w3;
    printf("%-40s %08x %08x %08x %08x %s\n", what, c[0], c[1], c[2], c[3], ok ? "ok" : "FAIL");
    if (!ok) fails++;
}
int main() {
    kat("philox4x32-10 zeros", 0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
    kat("philox4x32-10 ones", ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd);
    kat("philox4x32-10 pi", 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
        0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1);
    const int B = 3, per = 10, nq = (per + 3) / 4;
    Keys keys{};
    for (int b = 0; b < B; b++) keys.k[b] = 0x0123456789abcdefull * (b + 1);
    std::vector<float> out(B * per, NAN);
    launch({2, 1, 1}, {4, 1, 1}, [&] { rand_normal_philox(out.data(), 0, keys, 0x00000007fffffffeull, per, nq, (ll)B * nq); });
    for (int i = 0; i < B * per; i++) { unsigned u; memcpy(&u, &out[i], 4); printf("%08x%c", u, i % per == per - 1 ? '\n' : ' '); }
    printf("%d failures\n", fails);
    return fails != 0;
}

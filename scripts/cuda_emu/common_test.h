// Helpers of the scripts/cuda_emu tests: random inputs, comparisons, Go's grid formulas.
#include <random>
#include <algorithm>
static std::mt19937 rng(7);
static std::vector<float> randv(size_t n) { std::normal_distribution<float> d; std::vector<float> v(n); for (auto &x : v) x = d(rng); return v; }
static int fails = 0;
static void cmp(const char *what, const std::vector<float> &got, const std::vector<double> &want, double tol) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); i++) { double d = got[i] - want[i]; num += d * d; den += want[i] * want[i]; if (std::isnan(got[i])) { num = INFINITY; } }
    double e = std::sqrt(num / (den > 0 ? den : 1));
    printf("%-40s rel err %.3g %s\n", what, e, e <= tol ? "ok" : "FAIL");
    if (!(e <= tol)) fails++;
}
static void same(const char *what, const std::vector<float> &a, const std::vector<float> &b) {
    size_t bad = 0; for (size_t i = 0; i < a.size(); i++) if (memcmp(&a[i], &b[i], 4)) bad++;
    printf("%-40s %zu of %zu differ %s\n", what, bad, a.size(), bad ? "FAIL" : "ok");
    if (bad) fails++;
}
static void sameU16(const char *what, const std::vector<unsigned short> &a, const std::vector<unsigned short> &b) {
    size_t bad = 0; for (size_t i = 0; i < a.size(); i++) if (a[i] != b[i]) bad++;
    printf("%-40s %zu of %zu differ %s\n", what, bad, a.size(), bad ? "FAIL" : "ok");
    if (bad) fails++;
}
// Go's sumRows (colsums.go) and vecRow (ops.go)
static void sumRows(int rows, int sms, int bps, int &rpb, int &blocks) {
    int g = std::max(1, std::min(bps * sms, (rows + 3) / 4));
    rpb = (rows + g - 1) / g; blocks = (rows + rpb - 1) / rpb;
}
static int vecRow(int D) { int T = (D / 4 + 2) / 3; T = std::min(std::max((T + 31) & ~31, (D / 4 + 3) / 4), 1024); return (T + 31) & ~31; }

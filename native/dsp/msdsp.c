/* MindScript's DSP kernels: the inner loops of mindscript.dsp (loudness meter, true-peak interpolation,
 * limiter release, master mix) and the MP3 joiner's CRC in C, built for this CPU by tools/build_dsp.py
 * (make setup) and called through ctypes from mindscript/dsp/_native.py. Each computes what the numpy code beside it computes, in the same
 * precision (float64 filters, float32 interpolation), without that code's block-sized temporaries; where
 * no library was built, the numpy code runs. No allocation, no global state, no floating-point mode
 * changes (built without -ffast-math: see tools/build_lame.py).
 */
#include <math.h>
#include <stdint.h>

int ms_abi_version(void) { return 3; }

/* One biquad (transposed direct form II, as scipy's sosfilt) on v, state z0/z1; result in y. */
#define MS_BIQUAD(v, y, b0, b1, b2, a1, a2, z0, z1) do { \
        (y) = (b0) * (v) + (z0);                          \
        (z0) = (b1) * (v) - (a1) * (y) + (z1);            \
        (z1) = (b2) * (v) - (a2) * (y);                   \
    } while (0)

/* K-weighting (two sections, float64) of n interleaved float32 frames of ch channels, squared.
 *
 * sos: 2 x 6 (b0 b1 b2 a0 a1 a2, a0 = 1). zi: ch x 2 sections x 2, updated in place.
 * bounds: nb ascending frame offsets, bounds[0] = 0, all within [0, n]; sums[c * (nb - 1) + k] receives the
 * sum of the squares over frames bounds[k] .. bounds[k + 1] - 1; tail[c * (n - bounds[nb - 1]) + j] the square
 * of frame bounds[nb - 1] + j (the incomplete step that follows).
 * carry[c] starts the first step's sum (the squares of its frames from earlier blocks, summed in order):
 * each step is one running sum in frame order, so the sums do not depend on where blocks were cut.
 * Channels go through in pairs: the recursion is latency-bound, so two independent ones share its cost. */
void ms_kweight(const float *x, int64_t n, int ch, const double *sos, double *zi,
                const int64_t *bounds, int64_t nb, const double *carry, double *sums, double *tail)
{
    const double b00 = sos[0], b01 = sos[1], b02 = sos[2], a01 = sos[4], a02 = sos[5];
    const double b10 = sos[6], b11 = sos[7], b12 = sos[8], a11 = sos[10], a12 = sos[11];
    const int64_t last = bounds[nb - 1], steps = nb - 1;
    int c = 0;
    for (; c + 1 < ch; c += 2) {
        double *p = zi + 4 * c, *q = zi + 4 * (c + 1);
        double p00 = p[0], p01 = p[1], p10 = p[2], p11 = p[3];
        double q00 = q[0], q01 = q[1], q10 = q[2], q11 = q[3];
        const float *xc = x + c;
        double y0, y1, u0, u1;
        for (int64_t k = 0; k < steps; k++) {
            double pa = k ? 0.0 : carry[c], qa = k ? 0.0 : carry[c + 1];
            for (int64_t i = bounds[k]; i < bounds[k + 1]; i++) {
                double v = xc[i * ch], w = xc[i * ch + 1];
                MS_BIQUAD(v, y0, b00, b01, b02, a01, a02, p00, p01);
                MS_BIQUAD(y0, y1, b10, b11, b12, a11, a12, p10, p11);
                MS_BIQUAD(w, u0, b00, b01, b02, a01, a02, q00, q01);
                MS_BIQUAD(u0, u1, b10, b11, b12, a11, a12, q10, q11);
                pa += y1 * y1;
                qa += u1 * u1;
            }
            sums[c * steps + k] = pa;
            sums[(c + 1) * steps + k] = qa;
        }
        double *tp = tail + c * (n - last), *tq = tail + (c + 1) * (n - last);
        for (int64_t i = last; i < n; i++) {
            double v = xc[i * ch], w = xc[i * ch + 1];
            MS_BIQUAD(v, y0, b00, b01, b02, a01, a02, p00, p01);
            MS_BIQUAD(y0, y1, b10, b11, b12, a11, a12, p10, p11);
            MS_BIQUAD(w, u0, b00, b01, b02, a01, a02, q00, q01);
            MS_BIQUAD(u0, u1, b10, b11, b12, a11, a12, q10, q11);
            tp[i - last] = y1 * y1;
            tq[i - last] = u1 * u1;
        }
        p[0] = p00; p[1] = p01; p[2] = p10; p[3] = p11;
        q[0] = q00; q[1] = q01; q[2] = q10; q[3] = q11;
    }
    for (; c < ch; c++) {
        double *p = zi + 4 * c;
        double p00 = p[0], p01 = p[1], p10 = p[2], p11 = p[3];
        const float *xc = x + c;
        double y0, y1;
        for (int64_t k = 0; k < steps; k++) {
            double pa = k ? 0.0 : carry[c];
            for (int64_t i = bounds[k]; i < bounds[k + 1]; i++) {
                double v = xc[i * ch];
                MS_BIQUAD(v, y0, b00, b01, b02, a01, a02, p00, p01);
                MS_BIQUAD(y0, y1, b10, b11, b12, a11, a12, p10, p11);
                pa += y1 * y1;
            }
            sums[c * steps + k] = pa;
        }
        double *tp = tail + c * (n - last);
        for (int64_t i = last; i < n; i++) {
            double v = xc[i * ch];
            MS_BIQUAD(v, y0, b00, b01, b02, a01, a02, p00, p01);
            MS_BIQUAD(y0, y1, b10, b11, b12, a11, a12, p10, p11);
            tp[i - last] = y1 * y1;
        }
        p[0] = p00; p[1] = p01; p[2] = p10; p[3] = p11;
    }
}

#define MS_TAPS 32
#define MS_PHASES 3
#define MS_MAX_STEP 2048

/* True-peak interpolation (phases 1-3 of the 4x polyphase FIR, float32) of the given windows.
 *
 * rows: ch rows of `stride` float32 frames. For window w and output v (0 <= v < step):
 *   out[w * step + v] = max over channels c and phases p of |sum_t taps[p][t] * rows[c][windows[w] * step + v + t]|
 * which is what mindscript/dsp/truepeak.py's overlap-save FFTs give (to float32 rounding). Returns -1 when
 * step is over MS_MAX_STEP, else 0. */
int ms_interp_max(const float *rows, int64_t stride, int ch, const int64_t *windows, int64_t nw, int step,
                  const float *taps, float *out)
{
    float acc[MS_MAX_STEP];
    if (step <= 0 || step > MS_MAX_STEP) return -1;
    for (int64_t w = 0; w < nw; w++) {
        float *o = out + w * step;
        for (int v = 0; v < step; v++) o[v] = 0.0f;
        for (int c = 0; c < ch; c++) {
            const float *base = rows + c * stride + windows[w] * step;
            for (int p = 0; p < MS_PHASES; p++) {
                const float *g = taps + p * MS_TAPS;
                for (int v = 0; v < step; v++) acc[v] = 0.0f;
                for (int t = 0; t < MS_TAPS; t++) {
                    const float gt = g[t];
                    const float *xs = base + t;
                    for (int v = 0; v < step; v++) acc[v] += gt * xs[v];
                }
                for (int v = 0; v < step; v++) {
                    float a = fabsf(acc[v]);
                    o[v] = a > o[v] ? a : o[v];
                }
            }
        }
    }
    return 0;
}

/* Moving average of width w over x[0 .. n - 1] (n - w + 1 values into out) as differences of a running sum
 * computed in `total` (n + 1 doubles): the operations of numpy's cumsum, subtract and divide in
 * mindscript/dsp/limiter.py, so the values are numpy's bit for bit. out may be total itself. */
static void ms_moving_average(const double *x, int64_t n, int w, double *total, double *out)
{
    total[0] = 0.0;
    for (int64_t i = 0; i < n; i++) total[i + 1] = total[i] + x[i];
    for (int64_t q = 0; q + w <= n; q++) out[q] = (total[q + w] - total[q]) / (double)w;
}

/* The limiter's attack and release over one span of held reductions (dB), mindscript/dsp/limiter.py:
 * attack = two moving averages of widths b1 and b2 of history[0 .. h - 1] (m = h - b1 - b2 + 2 values),
 * then u[k] = max(attack[k], a * u[k - 1]) with a * u[-1] = released (the reduction the free release
 * reaches at the span's first frame). Writes u[0 .. m - 1]; scratch holds 2 * (h + 1) doubles. Returns m,
 * or -1 when the span is shorter than the two averages. */
int64_t ms_release(const double *history, int64_t h, int b1, int b2, double released, double a, double *u,
                   double *scratch)
{
    const int64_t n1 = h - b1 + 1, m = n1 - b2 + 1;
    if (b1 < 1 || b2 < 1 || m < 1) return -1;
    double *first = scratch, *total = scratch + (h + 1);
    ms_moving_average(history, h, b1, first, first);
    ms_moving_average(first, n1, b2, total, u);
    double prev = released;
    for (int64_t k = 0; k < m; k++) {
        const double v = u[k] > prev ? u[k] : prev;
        u[k] = v;
        prev = a * v;
    }
    return m;
}

/* One block of the unmastered mix (mindscript/master.py Mixer.block), n stereo frames into out (n x 2):
 *   out[i][c] = voice[i] * voice_gain + bed[i][c] * bed_gain[i] + tone_gain[i] * sum_k tones[k][c][i]
 * voice (n mono frames), bed (n x 2) with bed_gain (n), tone_gain (n) may each be NULL (no such layer; no
 * fade: gain 1). tones: n_tones pairs of channel pointers (left, right), each n frames. float32 throughout,
 * the additions in the numpy code's order. */
void ms_mix(float *out, int64_t n, const float *voice, float voice_gain, const float *bed, const float *bed_gain,
            int n_tones, const float *const *tones, const float *tone_gain)
{
    for (int64_t i = 0; i < n; i++) {
        float l = 0.0f, r = 0.0f;
        if (voice) l = r = voice[i] * voice_gain;
        if (bed) {
            l += bed[2 * i] * bed_gain[i];
            r += bed[2 * i + 1] * bed_gain[i];
        }
        if (n_tones) {
            float tl = tones[0][i], tr = tones[1][i];
            for (int k = 1; k < n_tones; k++) {
                tl += tones[2 * k][i];
                tr += tones[2 * k + 1][i];
            }
            if (tone_gain) {
                tl *= tone_gain[i];
                tr *= tone_gain[i];
            }
            l += tl;
            r += tr;
        }
        out[2 * i] = l;
        out[2 * i + 1] = r;
    }
}

/* CRC-16/ARC (polynomial 0x8005 reflected, no init or xorout) of n bytes, continued from crc: the LAME tag's
 * music and tag CRCs (mindscript/mp3frames.py, whose numpy code computes the same). */
uint32_t ms_crc16(const uint8_t *p, int64_t n, uint32_t crc)
{
    uint16_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xA001u : c >> 1;
        table[i] = (uint16_t) c;
    }
    crc &= 0xFFFFu;
    for (int64_t i = 0; i < n; i++)
        crc = (crc >> 8) ^ table[(crc ^ p[i]) & 0xFFu];
    return crc;
}

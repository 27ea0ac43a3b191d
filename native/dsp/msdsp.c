/* MindScript's DSP kernels: the inner loops of mindscript.dsp (loudness meter, true-peak envelope, limiter,
 * master mix) and the MP3 joiner's CRC in C, built for this CPU by tools/build_dsp.py (make setup) and called
 * through ctypes from mindscript/dsp/_native.py. Each computes what the numpy code beside it computes, in the
 * same precision (float64 filters and gain computer, float32 interpolation and gains), without that code's
 * block-sized temporaries; where no library was built, the numpy code runs. No allocation, no global state,
 * no floating-point mode changes (built without -ffast-math: see tools/build_lame.py).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

int ms_abi_version(void) { return 4; }

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
#define MS_GROUP 8  /* channels interpolated together (their window pointers live on the stack) */

/* Phases 1-3 of the 4x polyphase FIR (float32, the taps of mindscript/dsp/truepeak.py) for `step` outputs from
 * ch channel pointers, each reading step + 31 frames: raises o[v] to the max over channels and phases of |y|,
 * what truepeak.py's overlap-save FFTs give (to float32 rounding). */
static void ms_interp_window(const float *const *base, int ch, int step, const float *taps, float *o)
{
    float acc[MS_MAX_STEP];
    for (int c = 0; c < ch; c++) {
        for (int p = 0; p < MS_PHASES; p++) {
            const float *g = taps + p * MS_TAPS;
            for (int v = 0; v < step; v++) acc[v] = 0.0f;
            for (int t = 0; t < MS_TAPS; t++) {
                const float gt = g[t];
                const float *xs = base[c] + t;
                for (int v = 0; v < step; v++) acc[v] += gt * xs[v];
            }
            for (int v = 0; v < step; v++) {
                float a = fabsf(acc[v]);
                o[v] = a > o[v] ? a : o[v];
            }
        }
    }
}

/* The largest of n non-negative floats (0 for none), by their bit patterns: non-negative floats order as their
 * unsigned integers, and an integer maximum vectorizes where a float one (NaN rules) does not. */
static float ms_max_nonneg(const float *x, int64_t n)
{
    uint32_t top = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        top = b > top ? b : top;
    }
    float out;
    memcpy(&out, &top, sizeof out);
    return out;
}

/* The `span` frames of `row` (`stride` long) from w0: the row itself, or past its end a copy in pad with zeros. */
static const float *ms_window(const float *row, int64_t stride, int64_t w0, int64_t span, float *pad)
{
    if (w0 + span <= stride) return row + w0;
    for (int64_t t = 0; t < span; t++) pad[t] = w0 + t < stride ? row[w0 + t] : 0.0f;
    return pad;
}

/* The true-peak envelope with a floor (mindscript/dsp/truepeak.py _envelope): rows holds ch rows of `stride`
 * float32 frames (31 of history, then the block), m = stride - 31 outputs. env[j] is the max over channels of
 * |rows[c][j + 15]| (phase 0), raised to the interpolated phases' max in every window of `step` outputs whose
 * bound could exceed `floor` (every window when floor <= 0): the L1 bound l1 * max|x|, then, where that does
 * not settle it, (max|x| * slope2 + curve * max|d2x|) * margin, both over the frames the window reads (zeros
 * past the rows). a: `stride` floats of scratch. Returns the max of env (0 when m is 0), or -1 for a bad step. */
float ms_envelope(const float *rows, int64_t stride, int ch, int step, float floor_, float l1, float slope2,
                  float curve, float margin, const float *taps, float *env, float *a)
{
    const int64_t m = stride - (MS_TAPS - 1), span = step + MS_TAPS - 1;
    float pad[MS_GROUP][MS_MAX_STEP + MS_TAPS], vals[MS_MAX_STEP], d2[MS_MAX_STEP + MS_TAPS];
    const float *base[MS_GROUP];
    if (step <= 0 || step > MS_MAX_STEP || ch < 1) return -1.0f;
    if (m <= 0) return 0.0f;
    for (int64_t j = 0; j < stride; j++) a[j] = fabsf(rows[j]);
    for (int c = 1; c < ch; c++) {
        const float *x = rows + c * stride;
        for (int64_t j = 0; j < stride; j++) {
            const float w = fabsf(x[j]);
            a[j] = w > a[j] ? w : a[j];
        }
    }
    memcpy(env, a + MS_TAPS / 2 - 1, (size_t)m * sizeof *env);
    for (int64_t w0 = 0; w0 < m; w0 += step) {
        if (floor_ > 0.0f) {
            const int64_t end = w0 + span < stride ? w0 + span : stride;  /* frames past the rows read as 0 */
            const float peak = ms_max_nonneg(a + w0, end - w0);
            if (!(peak * l1 > floor_)) continue;
            float bend = 0.0f;
            for (int c = 0; c < ch; c++) {
                const float *x = ms_window(rows + c * stride, stride, w0, span, pad[0]);
                for (int64_t t = 0; t + 2 < span; t++) d2[t] = fabsf(((x[t + 2] + x[t]) - x[t + 1]) - x[t + 1]);
                const float b = ms_max_nonneg(d2, span - 2);
                bend = b > bend ? b : bend;
            }
            if (!((peak * slope2 + curve * bend) * margin > floor_)) continue;
        }
        for (int v = 0; v < step; v++) vals[v] = 0.0f;
        for (int c0 = 0; c0 < ch; c0 += MS_GROUP) {
            const int k = ch - c0 < MS_GROUP ? ch - c0 : MS_GROUP;
            for (int c = 0; c < k; c++) base[c] = ms_window(rows + (c0 + c) * stride, stride, w0, span, pad[c]);
            ms_interp_window(base, k, step, taps, vals);
        }
        for (int v = 0; v < step && w0 + v < m; v++) env[w0 + v] = vals[v] > env[w0 + v] ? vals[v] : env[w0 + v];
    }
    return ms_max_nonneg(env, m);
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

/* The limiter's gain computer and output for one call (mindscript/dsp/limiter.py _advance), in one pass.
 *
 * r (R = r0 + m + silence doubles, written): the required reductions (dB): the r0 the state held (r_prev),
 * then for each of this call's m envelope values 20 log10(env) - ceiling_db where env > ceiling (else 0), then
 * `silence` zeros (the stream's end). holds: the h0 held reductions of the state, then room for
 * n_hold = max(R - width + 1, 0) more, each the max of r over a window of `width`. The attack is two moving
 * averages (widths b1 and b2, b1 + b2 = look + 2) of the holds; u[k] = max(attack[k], a u[k - 1]) with
 * a u[-1] = released. The n = h0 + n_hold - look output frames are delay (n x ch float32) times 10^(-u/20) in
 * float32, exactly delay where u <= snap.
 * As in the numpy code, holds and averages are computed over the one span where they can be nonzero (the
 * averages with the same running sums, so bit for bit), the release over the rest is the free decay, and
 * frames whose reduction is under `snap` are copied.
 * scratch: 2 * (h0 + R + 2) doubles; dq: R int64. Writes holds, out and *u_last (u of the last output frame).
 * Returns n (nothing is output when n <= 0), or INT64_MIN for averages that do not fit the look-ahead. */
int64_t ms_limit(const double *r_prev, int64_t r0, const float *env, int64_t m, int64_t silence, float ceiling,
                 double ceiling_db, double *r, double *holds, int64_t h0, int64_t width, int look, int b1, int b2,
                 double released, double a, double snap, const float *delay, int ch, float *out, double *u_last,
                 double *scratch, int64_t *dq)
{
    const int64_t R = r0 + m + silence;
    if (b1 < 1 || b2 < 1 || b1 + b2 != look + 2) return INT64_MIN;
    memcpy(r, r_prev, (size_t)r0 * sizeof *r);
    for (int64_t j = 0; j < m; j++) r[r0 + j] = env[j] > ceiling ? 20.0 * log10((double)env[j]) - ceiling_db : 0.0;
    for (int64_t j = r0 + m; j < R; j++) r[j] = 0.0;
    const int64_t n_hold = R - width + 1 > 0 ? R - width + 1 : 0, hn = h0 + n_hold, n = hn - look;
    const float scale = -0.11512925464970229f;  /* -ln(10) / 20 */
    for (int64_t i = h0; i < hn; i++) holds[i] = 0.0;
    int64_t lo = 0, hi = R - 1;
    while (lo < R && r[lo] == 0.0) lo++;
    while (hi >= lo && r[hi] == 0.0) hi--;
    if (lo <= hi) {  /* hold h takes r[h .. h + width - 1]: nonzero only for lo - width + 1 <= h <= hi */
        int64_t head = 0, tail = 0;  /* indices of r whose values decrease: the window's max first */
        const int64_t first = lo - width + 1 > 0 ? lo - width + 1 : 0;
        const int64_t last = hi + width - 1 < R - 1 ? hi + width - 1 : R - 1;
        for (int64_t i = first; i <= last; i++) {
            while (tail > head && r[dq[tail - 1]] <= r[i]) tail--;
            dq[tail++] = i;
            if (dq[head] <= i - width) head++;
            if (i >= width - 1) holds[h0 + i - width + 1] = r[dq[head]];
        }
    }
    if (n <= 0) return n;
    /* outputs q0 .. q1 read nonzero holds (q reads holds q .. q + look) */
    int64_t f = 0, l = hn - 1;
    while (f < hn && holds[f] == 0.0) f++;
    while (l >= f && holds[l] == 0.0) l--;
    int64_t q0 = n, q1 = n - 1;
    const double *attack = NULL;
    if (f <= l) {
        q0 = f - look > 0 ? f - look : 0;
        q1 = l < n - 1 ? l : n - 1;
        if (q0 <= q1) {
            const int64_t span = q1 + look + 1 - q0;  /* holds q0 .. q1 + look */
            double *first = scratch, *total = scratch + (span + 1);
            ms_moving_average(holds + q0, span, b1, first, first);
            ms_moving_average(first, span - b1 + 1, b2, total, total);
            attack = total - q0;  /* attack[q] for q0 <= q <= q1 */
        } else {
            q0 = n, q1 = n - 1;
        }
    }
    double prev = released, v = 0.0;
    int64_t k = 0;
    while (k < n) {
        const int in_span = k >= q0 && k <= q1;
        const int64_t stop = in_span ? q1 + 1 : (k < q0 ? q0 : n);
        if (!in_span && !(prev > snap)) {  /* a free decay under the snap threshold: gain 1 to the stop */
            const int64_t count = stop - k;
            for (int64_t i = k * ch; i < stop * ch; i++) out[i] = delay[i];
            v = prev * pow(a, (double)(count - 1));
            prev = a * v;
            k = stop;
            continue;
        }
        for (; k < stop; k++) {
            const double att = in_span ? attack[k] : 0.0;
            v = att > prev ? att : prev;
            prev = a * v;
            const float *x = delay + k * ch;
            float *y = out + k * ch;
            if (v > snap) {
                const float g = expf((float)v * scale);
                for (int c = 0; c < ch; c++) y[c] = x[c] * g;
            } else {
                for (int c = 0; c < ch; c++) y[c] = x[c];
            }
            if (!in_span && !(prev > snap)) { k++; break; }
        }
    }
    *u_last = v;
    return n;
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

/* config.h for LAME 3.100's libmp3lame as mindscript builds it (tools/build_lame.py): a C99 compiler on a
   POSIX system. autoconf's configure would write the same answers for Linux and macOS with gcc or clang. */
#ifndef LAME_CONFIG_H
#define LAME_CONFIG_H
#define STDC_HEADERS 1
#define HAVE_ERRNO_H 1
#define HAVE_FCNTL_H 1
#define HAVE_LIMITS_H 1
#define HAVE_STDINT_H 1
#define HAVE_INTTYPES_H 1
#define HAVE_STDLIB_H 1
#define HAVE_STRING_H 1
#define HAVE_STRINGS_H 1
#define HAVE_UNISTD_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_INT8_T 1
#define HAVE_INT16_T 1
#define HAVE_INT32_T 1
#define HAVE_INT64_T 1
#define HAVE_UINT8_T 1
#define HAVE_UINT16_T 1
#define HAVE_UINT32_T 1
#define HAVE_UINT64_T 1
#define A_INT32_T int32_t
#define A_INT64_T int64_t
#define A_UINT32_T uint32_t
#define A_UINT64_T uint64_t
#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_FLOAT 4
#define SIZEOF_DOUBLE 8
#define SIZEOF_LONG __SIZEOF_LONG__
#define SIZEOF_UNSIGNED_INT 4
typedef float ieee754_float32_t;
typedef double ieee754_float64_t;
typedef long double ieee854_float80_t;
#define LAME_LIBRARY_BUILD 1
#define PACKAGE "lame"
#define PACKAGE_VERSION "3.100"
#define VERSION "3.100"
#define USE_FAST_LOG 1
#define TAKEHIRO_IEEE754_HACK 1
/* x86: the SSE intrinsics for init_xrpow and the FFT (tools/build_lame.py adds -DMIN_ARCH_SSE there) */
#if defined(__SSE__) || defined(__x86_64__)
#define HAVE_XMMINTRIN_H 1
#endif
#endif

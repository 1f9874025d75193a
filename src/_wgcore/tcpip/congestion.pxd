# RTT estimation / RTO (RFC 6298) and CUBIC congestion control (RFC 9438); see congestion.pyx.
# Plain structs embedded in TcpConn; the functions are C-only.
from libc.stdint cimport uint32_t

cdef enum:
    INITIAL_CWND_SEGMENTS = 10     # RFC 6928
    NO_SSTHRESH = 0x7fffffff       # "arbitrarily high" initial ssthresh (RFC 5681 §3.1)


cdef struct RttEstimator:
    double srtt                    # 0 until the first sample
    double rttvar
    double rto
    double min_rtt


cdef struct Cubic:
    uint32_t cwnd                  # bytes
    uint32_t ssthresh              # bytes
    double w_max                   # segments, the window before the last reduction
    double k                       # seconds from the epoch start to the plateau at w_max
    double origin                  # segments, the plateau of the current epoch
    double epoch_start             # 0: no congestion-avoidance epoch running
    double w_est                   # segments, the Reno-friendly estimate


cdef void rtt_init(RttEstimator* r) noexcept nogil
cdef void rtt_sample(RttEstimator* r, double rtt) noexcept nogil
cdef void rto_backoff(RttEstimator* r) noexcept nogil

cdef void cubic_init(Cubic* c, uint32_t cwnd) noexcept nogil
cdef void cubic_on_congestion(Cubic* c, uint32_t smss, uint32_t flight) noexcept nogil
cdef void cubic_on_ack(Cubic* c, uint32_t acked, uint32_t flight_before, uint32_t smss,
                       double srtt, double now) noexcept nogil

# cython: language_level=3
"""Round-trip time, retransmission timeout and CUBIC congestion control, per connection.

Theory of operation
-------------------
Two plain C structs embedded in the :class:`TcpConn`; the connection decides *when* (which ACK
gives a valid sample, what is a congestion event) and these functions decide *how much*.

* :c:type:`RttEstimator` (RFC 6298). ``rtt_init`` sets the initial RTO (1 s, §2.1). Each valid
  sample (timestamp echo, RFC 7323 §4.1, or Karn's one timed segment) goes through
  ``rtt_sample``: SRTT/RTTVAR per §2.2-2.3, RTO = SRTT + max(G, 4 RTTVAR) with a 1 ms clock
  granularity G, clamped to [RTO_MIN, RTO_MAX]. Like Linux we use a 200 ms floor, which §2.4
  permits ("MAY"), instead of 1 s. A timeout doubles the RTO (``rto_backoff``, §5.5) up to 60 s.
* :c:type:`Cubic` (RFC 9438), windows in bytes. Below ``ssthresh``: slow start (RFC 5681 §3.1),
  the window grows by the bytes acknowledged. Above: a congestion-avoidance epoch starts at the
  first ACK after a reduction; the window follows W_cubic(t) = C (t - K)^3 + W_max (§4.2), never
  below the Reno-friendly estimate W_est (§4.3), growing at most 1.5x per RTT (§4.2 "target").
  ``cubic_on_congestion`` (a loss, a timeout) remembers W_max with fast convergence (§4.7) and
  sets ssthresh = beta * window (§4.6), at least two segments; the connection then sets the
  window itself (PRR down to ssthresh in fast recovery, one segment after a timeout), calls
  it once per congestion episode, and may undo it (a spurious episode, shown by DSACKs).

Invariants: ``rto`` stays within [RTO_MIN, RTO_MAX] once initialised; ``cwnd`` stays within
(0, 2**30]; ``epoch_start == 0`` means no epoch is running (the next ACK in congestion
avoidance starts one).
"""
from libc.math cimport cbrt, fabs

from _wgcore.tcpip.wire cimport umin

# Seconds. RFC 6298 §2: initial RTO 1 s; floor 200 ms (§2.4 "MAY", as Linux); backoff cap 60 s.
cdef double RTO_INITIAL = 1.0
cdef double RTO_MIN = 0.2
cdef double RTO_MAX = 60.0
cdef double CUBIC_C = 0.4              # RFC 9438 §4.1
cdef double CUBIC_BETA = 0.7           # RFC 9438 §4.1


cdef void rtt_init(RttEstimator* r) noexcept nogil:
    r.srtt = 0
    r.rttvar = 0
    r.min_rtt = 0
    r.rto = RTO_INITIAL


cdef void rtt_sample(RttEstimator* r, double rtt) noexcept nogil:
    # RFC 6298 §2
    if rtt < 0.0001:
        rtt = 0.0001
    if r.min_rtt == 0 or rtt < r.min_rtt:
        r.min_rtt = rtt
    if r.srtt == 0:
        r.srtt = rtt
        r.rttvar = rtt / 2
    else:
        r.rttvar = 0.75 * r.rttvar + 0.25 * fabs(r.srtt - rtt)
        r.srtt = 0.875 * r.srtt + 0.125 * rtt
    r.rto = r.srtt + max(0.001, 4 * r.rttvar)
    if r.rto < RTO_MIN:
        r.rto = RTO_MIN
    elif r.rto > RTO_MAX:
        r.rto = RTO_MAX


cdef void rto_backoff(RttEstimator* r) noexcept nogil:
    # RFC 6298 §5.5: back off the timer, up to the maximum.
    r.rto = min(r.rto * 2, RTO_MAX)


cdef void cubic_init(Cubic* c, uint32_t cwnd) noexcept nogil:
    c.cwnd = cwnd
    c.ssthresh = NO_SSTHRESH


cdef void cubic_on_congestion(Cubic* c, uint32_t smss, uint32_t flight) noexcept nogil:
    # RFC 9438 §4.6-4.7: multiplicative decrease with fast convergence.
    cdef double cwnd_seg = <double>c.cwnd / smss
    if cwnd_seg < c.w_max:
        c.w_max = cwnd_seg * (1.0 + CUBIC_BETA) / 2.0
    else:
        c.w_max = cwnd_seg
    cdef uint32_t base = c.cwnd if c.cwnd < flight or flight == 0 else flight
    c.ssthresh = <uint32_t>(base * CUBIC_BETA)
    if c.ssthresh < 2 * smss:
        c.ssthresh = 2 * smss
    c.epoch_start = 0


cdef void cubic_on_ack(Cubic* c, uint32_t acked, uint32_t flight_before, uint32_t smss,
                       double srtt, double now) noexcept nogil:
    """RFC 9438 congestion avoidance / RFC 5681 slow start, per ACK of `acked` new bytes;
    `flight_before`: bytes in flight before the ACK."""
    cdef double t, target, cwnd_seg, rtt, k_arg
    # RFC 7661 spirit: only grow when the window was actually used.
    if flight_before + 3 * smss < c.cwnd and flight_before < c.cwnd // 2:
        return
    if c.cwnd < c.ssthresh:
        c.cwnd += umin(acked, 2 * smss * 8)
        if c.cwnd > c.ssthresh and c.ssthresh != NO_SSTHRESH:
            c.cwnd = c.ssthresh
        return
    cwnd_seg = <double>c.cwnd / smss
    if c.epoch_start == 0:
        c.epoch_start = now
        if cwnd_seg < c.w_max:
            k_arg = (c.w_max - cwnd_seg) / CUBIC_C
            c.k = cbrt(k_arg)
            c.origin = c.w_max
        else:
            c.k = 0
            c.origin = cwnd_seg
        c.w_est = cwnd_seg
    rtt = srtt if srtt > 0 else 0.001
    t = now - c.epoch_start + rtt
    target = c.origin + CUBIC_C * (t - c.k) * (t - c.k) * (t - c.k)
    if target < cwnd_seg:
        target = cwnd_seg
    elif target > 1.5 * cwnd_seg:
        target = 1.5 * cwnd_seg
    # RFC 9438 §4.3: the Reno-friendly estimate.
    c.w_est += (3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA)) * (<double>acked / smss) / cwnd_seg
    if c.w_est > target:
        target = c.w_est
    cwnd_seg += (target - cwnd_seg) / cwnd_seg * (<double>acked / smss)
    c.cwnd = <uint32_t>(cwnd_seg * smss)
    if c.cwnd > 0x40000000:
        c.cwnd = 0x40000000

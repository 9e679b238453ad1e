package io.mqvirtio.bench;

import java.util.List;

/**
 * One point of a benchmark: a scenario at one frame size, number of queue pairs and ring mode.
 *
 * @param ring           the layout and IN_ORDER choice asked of both sides (the point's place in the grid)
 * @param features       the virtio features the scenario's connection negotiated, as its live objects (or testpmd's
 *                       vhost log) said; {@link #UNKNOWN} when the point did not run or nothing said
 * @param packets        frames the receiver counted over its measured interval
 * @param seconds        that interval, on the receiver's own sampling clock
 * @param senderPackets  frames the sender reported sent over its own interval (what the receiver missed or the
 *                       sender dropped explains a difference)
 * @param senderSeconds  the sender's interval
 * @param threads        CPU time of every busy thread of both sides over the interval
 * @param status         {@link Status#OK}, or why there is no figure
 * @param note           what to know about this point (negotiated options, why it was skipped or failed)
 * @param intervalMpps   with several measured intervals per point: each one's rate (this point is the best)
 * @param roundMpps      with several rounds (the whole grid of points measured again, round after round): this
 *                       point's rate in each round, in order, NaN where it failed (this point is the best round)
 * @param roundTripNs    the sending and the receiving CPU's cache-line round trip ({@link CpuRoundTrip}) measured
 *                       just before this point's scenario was set up, NaN when not measured
 * @param roundRoundTripNs with several rounds: that round trip in each round, in order
 */
public record Measurement(Scenario scenario, int frameSize, int pairs, RingMode ring, long features, long packets,
                          double seconds, long senderPackets, double senderSeconds, List<ThreadCpu> threads,
                          Status status, String note, List<Double> intervalMpps, List<Double> roundMpps,
                          double roundTripNs, List<Double> roundRoundTripNs) {

    /** {@link #features} when no negotiation was seen. */
    public static final long UNKNOWN = -1;

    public Measurement(Scenario scenario, int frameSize, int pairs, RingMode ring, long features, long packets,
                       double seconds, long senderPackets, double senderSeconds, List<ThreadCpu> threads, Status status,
                       String note) {
        this(scenario, frameSize, pairs, ring, features, packets, seconds, senderPackets, senderSeconds, threads, status,
                note, List.of(), List.of(), Double.NaN, List.of());
    }

    /** This point with another note. */
    public Measurement withNote(String text) {
        return new Measurement(scenario, frameSize, pairs, ring, features, packets, seconds, senderPackets, senderSeconds,
                threads, status, text, intervalMpps, roundMpps, roundTripNs, roundRoundTripNs);
    }

    /** This point with the CPUs' round trip measured before it. */
    public Measurement withRoundTrip(double ns) {
        return new Measurement(scenario, frameSize, pairs, ring, features, packets, seconds, senderPackets, senderSeconds,
                threads, status, note, intervalMpps, roundMpps, ns, roundRoundTripNs);
    }

    /** What the connection negotiated, or null when that is not known. */
    public RingMode negotiated() {
        return features == UNKNOWN ? null : RingMode.of(features);
    }

    /**
     * The ring mode this point's figures belong to: what was negotiated, or, when that is not known, what was asked
     * for. Points are compared only with points of the same one.
     */
    public RingMode ringUsed() {
        RingMode n = negotiated();
        return n == null ? ring : n;
    }

    /**
     * One point measured in several rounds ({@code rounds}, in order; each the best of its intervals): the best
     * round that has a figure, with every round's rate, or the last round when none has one.
     */
    public static Measurement acrossRounds(List<Measurement> rounds) {
        Measurement best = null;
        for (Measurement m : rounds) {
            if (m.ok() && (best == null || m.mpps() > best.mpps())) {
                best = m;
            }
        }
        if (rounds.size() == 1 || best == null) {
            return rounds.get(rounds.size() - 1);
        }
        List<Double> rates = rounds.stream().map(Measurement::mpps).toList();
        return new Measurement(best.scenario, best.frameSize, best.pairs, best.ring, best.features, best.packets,
                best.seconds, best.senderPackets, best.senderSeconds, best.threads, best.status,
                best.noteWithRates("rounds", rates), best.intervalMpps,
                rates, best.roundTripNs, rounds.stream().map(Measurement::roundTripNs).toList());
    }

    /** The interval with the highest rate of {@code intervals} (all of one point), with every interval's rate. */
    public static Measurement best(List<Measurement> intervals) {
        Measurement best = intervals.get(0);
        for (Measurement m : intervals) {
            if (m.mpps() > best.mpps()) {
                best = m;
            }
        }
        if (intervals.size() == 1) {
            return best;
        }
        List<Double> rates = intervals.stream().map(Measurement::mpps).toList();
        return new Measurement(best.scenario, best.frameSize, best.pairs, best.ring, best.features, best.packets,
                best.seconds, best.senderPackets, best.senderSeconds, best.threads, best.status,
                best.noteWithRates("intervals", rates), rates, List.of(),
                best.roundTripNs, List.of());
    }

    /** This point's note, then "best of N {@code what} (Mpps r1 r2 ...)", a NaN rate as "failed". */
    private String noteWithRates(String what, List<Double> rates) {
        StringBuilder b = new StringBuilder(note == null ? "" : note);
        b.append(b.isEmpty() ? "" : "; ").append("best of ").append(rates.size()).append(' ').append(what).append(" (Mpps");
        for (double r : rates) {
            b.append(' ').append(Double.isNaN(r) ? "failed" : String.format(java.util.Locale.ROOT, "%.3f", r));
        }
        return b.append(')').toString();
    }

    public enum Status { OK, SKIPPED, FAILED }

    /** Sender ("tx") or receiver ("rx") side. */
    public static final String TX = "tx", RX = "rx";

    /**
     * One thread's CPU time (user + system) over the measured interval, and the frames it handled then (for a
     * thread that serves all of its side's queues, the side's total).
     */
    public record ThreadCpu(String side, String name, long cpuNanos, long packets) {
        public double nsPerPacket() {
            return packets == 0 ? Double.NaN : (double) cpuNanos / packets;
        }
    }

    public static Measurement skipped(Scenario s, int frameSize, int pairs, RingMode ring, String why) {
        return new Measurement(s, frameSize, pairs, ring, UNKNOWN, 0, 0, 0, 0, List.of(), Status.SKIPPED, why);
    }

    public static Measurement failed(Scenario s, int frameSize, int pairs, RingMode ring, String why) {
        return new Measurement(s, frameSize, pairs, ring, UNKNOWN, 0, 0, 0, 0, List.of(), Status.FAILED, why);
    }

    public boolean ok() {
        return status == Status.OK;
    }

    public double mpps() {
        return ok() && seconds > 0 ? packets / seconds / 1e6 : Double.NaN;
    }

    /** Frame bits per second (the frame as sent, without virtio-net header, FCS, preamble or gap). */
    public double gbps() {
        return mpps() * frameSize * 8 / 1e3;
    }

    public double senderMpps() {
        return ok() && senderSeconds > 0 ? senderPackets / senderSeconds / 1e6 : Double.NaN;
    }

    /** CPU nanoseconds per received packet of all threads of one side together. */
    public double cpuNsPerPacket(String side) {
        if (!ok() || packets == 0) {
            return Double.NaN;
        }
        long cpu = 0;
        boolean any = false;
        for (ThreadCpu t : threads) {
            if (t.side().equals(side)) {
                cpu += t.cpuNanos();
                any = true;
            }
        }
        return any ? (double) cpu / packets : Double.NaN;
    }

    /** CPUs kept busy: all measured threads' CPU time over the interval's wall time. */
    public double cores() {
        if (!ok() || seconds <= 0) {
            return Double.NaN;
        }
        return threads.stream().mapToLong(ThreadCpu::cpuNanos).sum() / (seconds * 1e9);
    }
}

package io.mqvirtio.bench;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/** Ratios to the reference, the console table and the CSV of a benchmark run. */
public final class BenchReport {
    private BenchReport() {}

    /**
     * The reference point ({@link Scenario#reference()}: scenario 3, or the TAP scenarios' syscall loops) measured at the same frame size and queue pairs with the same ring mode
     * ({@link Measurement#ringUsed}: a split ring compared with a split ring, IN_ORDER with IN_ORDER), or null.
     */
    public static Measurement reference(Measurement m, List<Measurement> all) {
        Scenario ref = m.scenario().reference();
        for (Measurement r : all) {
            // a syscall loop has no ring: it is measured once per ring mode of the grid, and matched by what was asked
            boolean sameRing = ref == Scenario.REFERENCE ? r.ringUsed().equals(m.ringUsed()) : r.ring().equals(m.ring());
            if (r.scenario() == ref && r.frameSize() == m.frameSize() && r.pairs() == m.pairs() && r.ok() && sameRing) {
                return r;
            }
        }
        return null;
    }

    /** This point's packet rate over the reference's at the same size, pairs and ring mode; NaN without one. */
    public static double ratio(Measurement m, List<Measurement> all) {
        Measurement r = reference(m, all);
        if (r == null || !m.ok() || !(r.mpps() > 0)) {
            return Double.NaN;
        }
        return m.mpps() / r.mpps();
    }

    /**
     * With several rounds: the median, over the rounds in which both were measured, of this point's rate over the
     * reference's in the same round (the two measured minutes apart at most, so a slow spell of a shared machine
     * weighs on both); NaN with fewer than two such rounds.
     */
    public static double medianRatio(Measurement m, List<Measurement> all) {
        return medianOfRounds(m, all, false);
    }

    /**
     * Two round trips this far apart or more put two measurements at different speeds of the machine: a shared
     * machine's CPUs move, and the round trip of the same two CPUs goes from 60-120 ns to 400-1000 ns and back.
     */
    public static final double SPEED_STEP = 2.0;

    /**
     * {@link #medianRatio} over only the rounds in which this point and the reference ran at one speed of the
     * machine: both with a CPU round trip measured just before them ({@link Measurement#roundRoundTripNs}), the
     * larger under {@link #SPEED_STEP} times the smaller. What the ratio means when the machine changes speed between
     * rounds (the measure asks for one speed throughout); NaN with fewer than two such rounds.
     */
    public static double sameSpeedMedianRatio(Measurement m, List<Measurement> all) {
        return medianOfRounds(m, all, true);
    }

    private static double medianOfRounds(Measurement m, List<Measurement> all, boolean sameSpeed) {
        Measurement r = reference(m, all);
        if (r == null || !m.ok() || m.roundMpps().size() != r.roundMpps().size()) {
            return Double.NaN;
        }
        if (sameSpeed && (m.roundRoundTripNs().size() != m.roundMpps().size()
                || r.roundRoundTripNs().size() != r.roundMpps().size())) {
            return Double.NaN;
        }
        List<Double> ratios = new ArrayList<>();
        for (int i = 0; i < m.roundMpps().size(); i++) {
            double a = m.roundMpps().get(i);
            double b = r.roundMpps().get(i);
            if (sameSpeed) {
                double x = m.roundRoundTripNs().get(i);
                double y = r.roundRoundTripNs().get(i);
                if (!(x > 0 && y > 0 && Math.max(x, y) < SPEED_STEP * Math.min(x, y))) { // false for NaN
                    continue;
                }
            }
            if (a >= 0 && b > 0) { // false for NaN
                ratios.add(a / b);
            }
        }
        if (ratios.size() < 2) {
            return Double.NaN;
        }
        ratios.sort(null);
        int n = ratios.size();
        return n % 2 == 1 ? ratios.get(n / 2) : (ratios.get(n / 2 - 1) + ratios.get(n / 2)) / 2;
    }

    public static final String TABLE_HEADER = String.format(Locale.ROOT,
            "%-14s %6s %5s %-15s %8s %8s %8s %9s %9s %6s %7s %7s %8s %6s", "scenario", "frame", "pairs", "ring", "Mpps",
            "Gbit/s", "sent", "TX ns/pk", "RX ns/pk", "cores", "vs ref", "med ref", "med same", "rt ns");

    /** Printed under a table of several rounds. */
    public static final String SAME_SPEED_LEGEND = "med ref: median of per-round ratios to the reference; med same: "
            + "the same over the rounds where both ran at one speed of the machine (CPU round trips under "
            + SPEED_STEP + "x apart), empty with fewer than two";

    /** What {@link #ringText} marks a ring mode with when it is what was asked for, not what was seen negotiated. */
    public static final String ASKED_MARK = "*";

    /** Printed under a table that has a ring mode marked {@link #ASKED_MARK}. */
    public static final String ASKED_LEGEND = ASKED_MARK + " ring: what was asked for; no negotiation was seen "
            + "(the point did not run, or testpmd's log did not say)";

    /** The ring mode of a point as the table shows it: what was negotiated, else what was asked for, marked. */
    public static String ringText(Measurement m) {
        RingMode n = m.negotiated();
        return n != null ? n.label() : m.ring().label() + ASKED_MARK;
    }

    public static String tableRow(Measurement m, List<Measurement> all) {
        String head = String.format(Locale.ROOT, "%-14s %6d %5d %-15s", m.scenario().title(), m.frameSize(), m.pairs(),
                ringText(m));
        if (!m.ok()) {
            return head + "  " + m.status().name().toLowerCase(Locale.ROOT) + ": " + firstLine(m.note());
        }
        return head + String.format(Locale.ROOT, " %8.3f %8.3f %8.3f %9.1f %9.1f %6.2f %7s %7s %8s %6s", m.mpps(),
                m.gbps(), m.senderMpps(), m.cpuNsPerPacket(Measurement.TX), m.cpuNsPerPacket(Measurement.RX), m.cores(),
                fmt(ratio(m, all), "%.2f"), fmt(medianRatio(m, all), "%.2f"), fmt(sameSpeedMedianRatio(m, all), "%.2f"),
                fmt(m.roundTripNs(), "%.0f"));
    }

    /** "driver-qp0 120.1, driver-qp1 119.5 | backend-qp0 80.2": each busy thread's CPU ns per packet it handled. */
    public static String threadLine(Measurement m) {
        List<String> tx = new ArrayList<>();
        List<String> rx = new ArrayList<>();
        for (Measurement.ThreadCpu t : m.threads()) {
            String s = t.name() + " " + fmt(t.nsPerPacket(), "%.1f");
            (t.side().equals(Measurement.TX) ? tx : rx).add(s);
        }
        return String.join(", ", tx) + " | " + String.join(", ", rx);
    }

    public static String csv(List<Measurement> all) {
        StringBuilder b = new StringBuilder();
        b.append("scenario,label,frame_bytes,pairs,ring_asked,ring_negotiated,features,status,mpps,gbps,packets,seconds,sender_mpps,sender_packets,"
                + "sender_seconds,tx_cpu_ns_per_packet,rx_cpu_ns_per_packet,cores,ratio_to_reference,"
                + "median_round_ratio_to_reference,median_round_ratio_same_speed,cpu_round_trip_ns,threads,note\n");
        for (Measurement m : all) {
            StringBuilder threads = new StringBuilder();
            for (Measurement.ThreadCpu t : m.threads()) {
                if (!threads.isEmpty()) {
                    threads.append(';');
                }
                threads.append(t.side()).append(':').append(t.name()).append('=').append(fmt(t.nsPerPacket(), "%.1f"));
            }
            b.append(m.scenario().id()).append(',').append(m.scenario().label()).append(',').append(m.frameSize())
                    .append(',').append(m.pairs()).append(',').append(m.ring().label())
                    .append(',').append(m.negotiated() == null ? "" : m.negotiated().label())
                    .append(',').append(featuresText(m))
                    .append(',').append(m.status().name().toLowerCase(Locale.ROOT))
                    .append(',').append(fmt(m.mpps(), "%.4f")).append(',').append(fmt(m.gbps(), "%.4f"))
                    .append(',').append(m.packets()).append(',').append(fmt(m.seconds(), "%.4f"))
                    .append(',').append(fmt(m.senderMpps(), "%.4f")).append(',').append(m.senderPackets())
                    .append(',').append(fmt(m.senderSeconds(), "%.4f"))
                    .append(',').append(fmt(m.cpuNsPerPacket(Measurement.TX), "%.2f"))
                    .append(',').append(fmt(m.cpuNsPerPacket(Measurement.RX), "%.2f"))
                    .append(',').append(fmt(m.cores(), "%.3f")).append(',').append(fmt(ratio(m, all), "%.4f"))
                    .append(',').append(fmt(medianRatio(m, all), "%.4f"))
                    .append(',').append(fmt(sameSpeedMedianRatio(m, all), "%.4f"))
                    .append(',').append(fmt(m.roundTripNs(), "%.1f"))
                    .append(',').append(quote(threads.toString())).append(',').append(quote(m.note() == null ? "" : m.note()))
                    .append('\n');
        }
        return b.toString();
    }

    /** The negotiated feature bits as hex ("0x130000000"), or "" when not known. */
    public static String featuresText(Measurement m) {
        return m.features() == Measurement.UNKNOWN ? "" : "0x" + Long.toHexString(m.features());
    }

    static String fmt(double v, String f) {
        return Double.isNaN(v) || Double.isInfinite(v) ? "" : String.format(Locale.ROOT, f, v);
    }

    private static String quote(String s) {
        if (s.indexOf(',') < 0 && s.indexOf('"') < 0 && s.indexOf('\n') < 0) {
            return s;
        }
        return '"' + s.replace("\"", "\"\"") + '"';
    }

    private static String firstLine(String s) {
        if (s == null) {
            return "";
        }
        int nl = s.indexOf('\n');
        return nl < 0 ? s : s.substring(0, nl) + " …";
    }
}

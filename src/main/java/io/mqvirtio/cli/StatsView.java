package io.mqvirtio.cli;

import java.time.LocalTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * {@code mqvirtio stats --watch} on a terminal: one screen, redrawn in place each interval, one line per queue pair
 * with both directions' rates (packets/s and Mbit/s each way; drops, errors, kicks and notifications per second of
 * the pair's two queues together), that fits the terminal: narrower terminals lose the kick and notification
 * columns, and when the pairs do not fit its height the busiest are shown and the rest summed in one line.
 */
final class StatsView {
    private static final DateTimeFormatter CLOCK = DateTimeFormatter.ofPattern("HH:mm:ss");
    /** Clears the screen and goes home (ANSI: ED 2, CUP). */
    static final String CLEAR = "\033[H\033[2J";
    private static final int WIDE = 76;

    private StatsView() {}

    /** One pair's rates over an interval: per direction packets/s and bytes/s, and the rest summed. */
    record PairRates(int pair, double rxPps, double rxBps, double txPps, double txBps, double drops, double errors,
            double kicks, double notifications) {
        double packets() {
            return rxPps + txPps;
        }

        PairRates plus(PairRates o) {
            return new PairRates(-1, rxPps + o.rxPps, rxBps + o.rxBps, txPps + o.txPps, txBps + o.txBps, drops + o.drops,
                    errors + o.errors, kicks + o.kicks, notifications + o.notifications);
        }
    }

    static final PairRates ZERO = new PairRates(-1, 0, 0, 0, 0, 0, 0, 0, 0);

    /** The rates of each pair of {@code now} against {@code prev} (same device), or null if its counters restarted. */
    static List<PairRates> rates(DeviceStats prev, DeviceStats now, double seconds) {
        double[][] q = Stats.queueRates(prev, now, seconds);
        if (q == null) {
            return null;
        }
        Map<Integer, double[]> byPair = new java.util.TreeMap<>();
        for (int i = 0; i < q.length; i++) {
            DeviceStats.Queue queue = now.queues().get(i);
            double[] r = byPair.computeIfAbsent(queue.pair(), k -> new double[8]);
            int at = queue.direction().equals("rx") ? 0 : 2;
            r[at] += q[i][0];
            r[at + 1] += q[i][1];
            for (int k = 2; k < Stats.RATES; k++) {
                r[2 + k] += q[i][k];
            }
        }
        List<PairRates> out = new ArrayList<>();
        byPair.forEach((pair, r) -> out.add(new PairRates(pair, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])));
        return out;
    }

    /** The screen for the interval {@code prev} to {@code now}, at most {@code columns} x {@code rows}. */
    static String frame(Stats.Sample prev, Stats.Sample now, String from, int columns, int rows) {
        double secs = (now.uptimeMillis() - prev.uptimeMillis()) / 1000.0;
        boolean wide = columns >= WIDE;
        Map<String, DeviceStats> before = new HashMap<>();
        prev.devices().forEach(d -> before.put(d.name(), d));
        List<String> lines = new ArrayList<>();
        lines.add(clip(String.format(Locale.ROOT, "%s  mqvirtio stats  %s  over %.2f s", LocalTime.now().format(CLOCK),
                from, secs), columns));
        // the lines each device needs besides its pairs: its title, the column heads and the total
        int budget = rows - 1 - 3 * now.devices().size();
        int perDevice = Math.max(1, budget / Math.max(1, now.devices().size()));
        for (DeviceStats d : now.devices()) {
            lines.add(clip(d.name() + "  " + d.backend() + ", " + d.pairs() + " pairs, frontend "
                    + (d.connected() ? "connected" : "not connected"), columns));
            List<PairRates> r = rates(before.get(d.name()), d, secs);
            if (r == null) {
                lines.add("  counters restarted: rates from the next interval on");
                continue;
            }
            lines.add(clip(head(wide), columns));
            List<PairRates> shown = r;
            PairRates rest = null;
            if (r.size() > perDevice) {
                int keep = Math.max(1, perDevice - 1);
                List<PairRates> busiest = new ArrayList<>(r);
                busiest.sort(Comparator.comparingDouble(PairRates::packets).reversed());
                shown = new ArrayList<>(busiest.subList(0, keep));
                shown.sort(Comparator.comparingInt(PairRates::pair));
                rest = busiest.subList(keep, busiest.size()).stream().reduce(ZERO, PairRates::plus);
            }
            for (PairRates p : shown) {
                lines.add(clip(row(Integer.toString(p.pair()), p, wide), columns));
            }
            if (rest != null) {
                lines.add(clip(row("+" + (r.size() - shown.size()), rest, wide), columns));
            }
            lines.add(clip(row("all", r.stream().reduce(ZERO, PairRates::plus), wide), columns));
        }
        return String.join("\n", lines) + "\n";
    }

    private static String head(boolean wide) {
        return String.format(Locale.ROOT, "%-5s %9s %8s %9s %8s %7s %6s", "qp", "rx pps", "rx Mb/s", "tx pps", "tx Mb/s",
                "drop/s", "err/s") + (wide ? String.format(Locale.ROOT, " %7s %7s", "kick/s", "irq/s") : "");
    }

    private static String row(String label, PairRates p, boolean wide) {
        return String.format(Locale.ROOT, "%-5s %9s %8.1f %9s %8.1f %7.0f %6.0f", label, count(p.rxPps()),
                p.rxBps() * 8 / 1e6, count(p.txPps()), p.txBps() * 8 / 1e6, p.drops(), p.errors())
                + (wide ? String.format(Locale.ROOT, " %7s %7s", count(p.kicks()), count(p.notifications())) : "");
    }

    /** A rate in at most 9 characters: 1234567, 12.3M. */
    static String count(double v) {
        if (v < 10_000_000) {
            return String.format(Locale.ROOT, "%.0f", v);
        }
        return String.format(Locale.ROOT, "%.1fM", v / 1e6);
    }

    private static String clip(String s, int columns) {
        return s.length() <= columns ? s : s.substring(0, Math.max(0, columns));
    }
}

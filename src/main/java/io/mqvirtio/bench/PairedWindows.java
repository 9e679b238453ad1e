package io.mqvirtio.bench;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;

/**
 * Rates of neighbouring windows of one run, one with a change off and one with it on: the median of their ratios
 * (with quartiles) is what the change did. On a machine whose speed drifts or jumps (the dev VMs' two speeds), only
 * neighbours share a speed; separate runs cannot show a 10 % effect.
 */
public final class PairedWindows {
    private final List<double[]> pairs = new ArrayList<>(); // off, on

    public void add(double offMpps, double onMpps) {
        pairs.add(new double[] {offMpps, onMpps});
    }

    public int size() {
        return pairs.size();
    }

    /** The ratios on/off of the pairs whose off window moved anything, sorted. */
    public double[] ratios() {
        return pairs.stream().filter(p -> p[0] > 0).mapToDouble(p -> p[1] / p[0]).sorted().toArray();
    }

    public double median() {
        return quantile(ratios(), 0.5);
    }

    /** The q-quantile of sorted values (linear between neighbours); NaN for none. */
    static double quantile(double[] sorted, double q) {
        if (sorted.length == 0) {
            return Double.NaN;
        }
        double at = q * (sorted.length - 1);
        int i = (int) Math.floor(at);
        int j = Math.min(i + 1, sorted.length - 1);
        return sorted[i] + (sorted[j] - sorted[i]) * (at - i);
    }

    private double medianOf(int which) {
        return quantile(pairs.stream().mapToDouble(p -> p[which]).sorted().toArray(), 0.5);
    }

    @Override
    public String toString() {
        double[] r = ratios();
        return String.format(Locale.ROOT, "on/off %.3f (quartiles %.3f-%.3f) over %d pairs of windows; median Mpps "
                        + "on %.3f, off %.3f", quantile(r, 0.5), quantile(r, 0.25), quantile(r, 0.75), r.length,
                medianOf(1), medianOf(0));
    }

    /** For the JSON or a test: every pair's rates, off then on. */
    public List<double[]> windows() {
        return pairs.stream().map(p -> Arrays.copyOf(p, 2)).toList();
    }
}

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
    /**
     * Per pair, our backend's workers' CPU ns per frame, off then on (NaN where the scenario has none): what a frame
     * costs the host, which a rate set by another CPU (a sender's, a driver's) does not show.
     */
    private final List<double[]> costs = new ArrayList<>();

    public void add(double offMpps, double onMpps) {
        add(offMpps, onMpps, Double.NaN, Double.NaN);
    }

    /** A pair of windows with our workers' CPU ns per frame in each. */
    public void add(double offMpps, double onMpps, double offWorkerNs, double onWorkerNs) {
        pairs.add(new double[] {offMpps, onMpps});
        costs.add(new double[] {offWorkerNs, onWorkerNs});
    }

    /** The ratios on/off of the workers' CPU ns per frame where both windows had one, sorted (below 1: cheaper). */
    public double[] costRatios() {
        return costs.stream().filter(c -> c[0] > 0 && c[1] > 0).mapToDouble(c -> c[1] / c[0]).sorted().toArray();
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
        String rates = String.format(Locale.ROOT, "on/off %.3f (quartiles %.3f-%.3f) over %d pairs of windows; median Mpps "
                        + "on %.3f, off %.3f", quantile(r, 0.5), quantile(r, 0.25), quantile(r, 0.75), r.length,
                medianOf(1), medianOf(0));
        double[] c = costRatios();
        if (c.length == 0) {
            return rates;
        }
        return rates + String.format(Locale.ROOT, "; worker CPU per frame on/off %.3f (quartiles %.3f-%.3f), median ns "
                        + "on %.1f, off %.1f", quantile(c, 0.5), quantile(c, 0.25), quantile(c, 0.75),
                quantile(costs.stream().mapToDouble(x -> x[1]).filter(x -> x > 0).sorted().toArray(), 0.5),
                quantile(costs.stream().mapToDouble(x -> x[0]).filter(x -> x > 0).sorted().toArray(), 0.5));
    }

    /** For the JSON or a test: every pair's rates, off then on. */
    public List<double[]> windows() {
        return pairs.stream().map(p -> Arrays.copyOf(p, 2)).toList();
    }
}

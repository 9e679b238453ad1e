package io.mqvirtio.bench;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.within;

import org.junit.jupiter.api.Test;

class PairedWindowsTest {
    @Test
    void theMedianOfNeighboursRatiosIgnoresHowFastTheMachineWas() {
        PairedWindows w = new PairedWindows();
        // the machine at two speeds (10 and 20 Mpps); the change buys 10 % at both, once 30 %
        w.add(10, 11);
        w.add(20, 22);
        w.add(10, 11);
        w.add(20, 26);
        w.add(20, 22);
        assertThat(w.size()).isEqualTo(5);
        assertThat(w.ratios()).containsExactly(new double[] {1.1, 1.1, 1.1, 1.1, 1.3}, within(1e-9));
        assertThat(w.median()).isCloseTo(1.1, within(1e-9));
        assertThat(w.toString()).isEqualTo("on/off 1.100 (quartiles 1.100-1.100) over 5 pairs of windows; median Mpps "
                + "on 22.000, off 20.000");
    }

    @Test
    void theWorkersCostPerFrameIsPairedToo() {
        PairedWindows w = new PairedWindows();
        // the rate set elsewhere (the same in every window); the change makes each frame 20 % cheaper for the worker
        w.add(1.0, 1.0, 1000, 800);
        w.add(1.0, 1.0, 2000, 1600);
        w.add(1.0, 1.0, Double.NaN, 700); // a window without a worker figure has no cost ratio
        assertThat(w.costRatios()).containsExactly(new double[] {0.8, 0.8}, within(1e-9));
        assertThat(w.toString()).endsWith("; worker CPU per frame on/off 0.800 (quartiles 0.800-0.800), median ns on "
                + "800.0, off 1500.0");
        PairedWindows none = new PairedWindows();
        none.add(1, 2);
        assertThat(none.toString()).doesNotContain("worker");
    }

    @Test
    void aWindowThatMovedNothingHasNoRatio() {
        PairedWindows w = new PairedWindows();
        w.add(0, 5);
        w.add(4, 2);
        assertThat(w.ratios()).containsExactly(0.5);
        assertThat(new PairedWindows().median()).isNaN();
    }

    @Test
    void quartilesInterpolateBetweenNeighbours() {
        double[] v = {1, 2, 3, 4};
        assertThat(PairedWindows.quantile(v, 0.25)).isEqualTo(1.75);
        assertThat(PairedWindows.quantile(v, 0.5)).isEqualTo(2.5);
        assertThat(PairedWindows.quantile(v, 1)).isEqualTo(4);
    }
}

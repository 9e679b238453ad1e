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

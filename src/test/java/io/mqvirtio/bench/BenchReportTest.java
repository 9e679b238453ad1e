package io.mqvirtio.bench;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.within;

import io.mqvirtio.virtio.VirtioFeatures;
import java.util.List;
import org.junit.jupiter.api.Test;

class BenchReportTest {
    static final RingMode SPLIT_IN_ORDER = new RingMode(false, true);
    static final RingMode PACKED_IN_ORDER = new RingMode(true, true);

    /** Features a connection of this mode negotiates (with VERSION_1 and EVENT_IDX). */
    static long features(RingMode m) {
        return VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
                | (m.packed() ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (m.inOrder() ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
    }

    /** A point asked for {@code asked} that negotiated {@code features}. */
    static Measurement point(Scenario s, int size, int pairs, RingMode asked, long features, long packets) {
        return new Measurement(s, size, pairs, asked, features, packets, 1.0, packets, 1.0,
                List.of(new Measurement.ThreadCpu(Measurement.TX, "tx0", packets * 100, packets),
                        new Measurement.ThreadCpu(Measurement.RX, "rx0", packets * 50, packets)),
                Measurement.Status.OK, "a note, with a comma");
    }

    static Measurement point(Scenario s, int size, int pairs, long packets) {
        return point(s, size, pairs, SPLIT_IN_ORDER, features(SPLIT_IN_ORDER), packets);
    }

    @Test
    void ratiosAreToTheReferenceAtTheSameSizeAndPairs() {
        Measurement ref64 = point(Scenario.DPDK_TO_DPDK, 64, 1, 2_000_000);
        Measurement ref1500 = point(Scenario.DPDK_TO_DPDK, 1500, 1, 1_000_000);
        Measurement ours64 = point(Scenario.DPDK_TO_OURS, 64, 1, 3_000_000);
        Measurement ours1500 = point(Scenario.DPDK_TO_OURS, 1500, 1, 500_000);
        Measurement ours2 = point(Scenario.DPDK_TO_OURS, 64, 2, 1_000_000);
        List<Measurement> all = List.of(ref64, ref1500, ours64, ours1500, ours2);
        assertThat(BenchReport.ratio(ours64, all)).isEqualTo(1.5);
        assertThat(BenchReport.ratio(ours1500, all)).isEqualTo(0.5);
        assertThat(BenchReport.ratio(ref64, all)).isEqualTo(1.0);
        assertThat(BenchReport.ratio(ours2, all)).as("no reference at 2 pairs").isNaN();
        assertThat(BenchReport.ratio(ours64, List.of(ours64, Measurement.failed(Scenario.DPDK_TO_DPDK, 64, 1,
                SPLIT_IN_ORDER, "x")))).isNaN();
    }

    @Test
    void ratiosAreToTheReferenceThatNegotiatedTheSameRing() {
        RingMode split = new RingMode(false, false);
        Measurement refSplit = point(Scenario.DPDK_TO_DPDK, 64, 1, split, features(split), 4_000_000);
        Measurement refSplitInOrder = point(Scenario.DPDK_TO_DPDK, 64, 1, SPLIT_IN_ORDER, features(SPLIT_IN_ORDER),
                5_000_000);
        Measurement refPacked = point(Scenario.DPDK_TO_DPDK, 64, 1, PACKED_IN_ORDER, features(PACKED_IN_ORDER), 8_000_000);
        Measurement oursPacked = point(Scenario.DPDK_TO_OURS, 64, 1, PACKED_IN_ORDER, features(PACKED_IN_ORDER), 2_000_000);
        Measurement oursSplit = point(Scenario.DPDK_TO_OURS, 64, 1, split, features(split), 2_000_000);
        List<Measurement> all = List.of(refSplit, refSplitInOrder, refPacked, oursPacked, oursSplit);
        assertThat(BenchReport.ratio(oursPacked, all)).as("packed+inorder against packed+inorder").isEqualTo(0.25);
        assertThat(BenchReport.ratio(oursSplit, all)).as("split against split").isEqualTo(0.5);
        assertThat(BenchReport.ratio(refSplitInOrder, all)).isEqualTo(1.0);
        // asked for IN_ORDER, negotiated without it: compared with what it negotiated
        Measurement refused = point(Scenario.OURS_TO_DPDK, 64, 1, SPLIT_IN_ORDER, features(split), 1_000_000);
        assertThat(BenchReport.ratio(refused, List.of(refSplit, refSplitInOrder, refused))).isEqualTo(0.25);
        assertThat(BenchReport.ringText(refused)).isEqualTo("split");
        // no reference of that ring: no ratio
        assertThat(BenchReport.ratio(oursPacked, List.of(refSplit, refSplitInOrder, oursPacked))).isNaN();
        // a reference whose negotiation was not seen counts as what it was asked for, and says so
        Measurement refAsked = point(Scenario.DPDK_TO_DPDK, 64, 1, PACKED_IN_ORDER, Measurement.UNKNOWN, 4_000_000);
        assertThat(BenchReport.ratio(oursPacked, List.of(refAsked, oursPacked))).isEqualTo(0.5);
        assertThat(BenchReport.ringText(refAsked)).isEqualTo("packed+inorder" + BenchReport.ASKED_MARK);
        assertThat(BenchReport.tableRow(refAsked, List.of(refAsked))).contains(" packed+inorder* ");
        assertThat(BenchReport.tableRow(oursPacked, all)).containsPattern("2 dpdk->ours\\s+64\\s+1 packed\\+inorder\\s+2\\.000");
        assertThat(BenchReport.TABLE_HEADER).containsPattern("pairs ring\\s+Mpps");
    }

    /** One point measured in rounds at these rates (Mpps; NaN: the round failed). */
    static Measurement rounds(Scenario s, double... mpps) {
        List<Measurement> r = new java.util.ArrayList<>();
        for (double x : mpps) {
            r.add(Double.isNaN(x) ? Measurement.failed(s, 64, 1, SPLIT_IN_ORDER, "testpmd died")
                    : point(s, 64, 1, (long) (x * 1e6)));
        }
        return Measurement.acrossRounds(r);
    }

    @Test
    void roundsGiveTheBestRoundAndTheMedianOfPerRoundRatios() {
        Measurement ref = rounds(Scenario.DPDK_TO_DPDK, 10, 5, 8, 4);
        Measurement ours = rounds(Scenario.DPDK_TO_OURS, 12, 9, 6, 2);
        List<Measurement> all = List.of(ref, ours);
        assertThat(ref.mpps()).isEqualTo(10.0);
        assertThat(ours.mpps()).isEqualTo(12.0);
        assertThat(ours.roundMpps()).containsExactly(12.0, 9.0, 6.0, 2.0);
        assertThat(ours.note()).endsWith("best of 4 rounds (Mpps 12.000 9.000 6.000 2.000)");
        assertThat(BenchReport.ratio(ours, all)).as("best over best").isEqualTo(1.2);
        // per round 1.2, 1.8, 0.75, 0.5: the median is between 0.75 and 1.2
        assertThat(BenchReport.medianRatio(ours, all)).isCloseTo(0.975, org.assertj.core.data.Offset.offset(1e-9));
        assertThat(BenchReport.medianRatio(ref, all)).isEqualTo(1.0);
        // a failed round of either side leaves that round out
        Measurement gap = rounds(Scenario.DPDK_TO_OURS, 20, Double.NaN, 4, 8);
        assertThat(gap.ok()).isTrue();
        assertThat(gap.mpps()).isEqualTo(20.0);
        assertThat(gap.note()).contains("(Mpps 20.000 failed 4.000 8.000)");
        assertThat(BenchReport.medianRatio(gap, List.of(ref, gap))).as("rounds 1, 3, 4: 2.0, 0.5, 2.0").isEqualTo(2.0);
        // one round, or every round failed: no median, the point as it was
        Measurement one = rounds(Scenario.DPDK_TO_OURS, 3);
        assertThat(BenchReport.medianRatio(one, List.of(rounds(Scenario.DPDK_TO_DPDK, 2), one))).isNaN();
        Measurement none = rounds(Scenario.DPDK_TO_OURS, Double.NaN, Double.NaN);
        assertThat(none.status()).isEqualTo(Measurement.Status.FAILED);
        assertThat(BenchReport.medianRatio(none, List.of(ref, none))).isNaN();
        assertThat(BenchReport.tableRow(ours, all)).containsPattern(" 1\\.20 +0\\.9[78] +$");
    }

    /** Rounds of {@code mpps[i]} Mpps, each measured after a CPU round trip of {@code rt[i]} ns. */
    static Measurement rounds(Scenario s, double[] mpps, double[] rt) {
        List<Measurement> r = new java.util.ArrayList<>();
        for (int i = 0; i < mpps.length; i++) {
            r.add(point(s, 64, 1, (long) (mpps[i] * 1e6)).withRoundTrip(rt[i]));
        }
        return Measurement.acrossRounds(r);
    }

    @Test
    void theSameSpeedMedianLeavesOutRoundsWhereTheMachineChangedSpeedBetweenPointAndReference() {
        // rounds: both fast (1.1), ours slow and the reference fast (0.4), both slow (0.95), ours fast and the
        // reference slow (2.5), both fast (1.05), a round trip not measured (NaN: left out)
        Measurement ref = rounds(Scenario.DPDK_TO_DPDK, new double[] {20, 20, 10, 10, 20, 20},
                new double[] {80, 90, 450, 470, 85, Double.NaN});
        Measurement ours = rounds(Scenario.DPDK_TO_OURS, new double[] {22, 8, 9.5, 25, 21, 30},
                new double[] {85, 460, 440, 82, 95, 80});
        List<Measurement> all = List.of(ref, ours);
        assertThat(ours.roundRoundTripNs()).hasSize(6);
        // every round: 1.1, 0.4, 0.95, 2.5, 1.05, 1.5 -> median of 1.05 and 1.1
        assertThat(BenchReport.medianRatio(ours, all)).isCloseTo(1.075, within(1e-9));
        // one speed: 1.1, 0.95, 1.05
        assertThat(BenchReport.sameSpeedMedianRatio(ours, all)).isCloseTo(1.05, within(1e-9));
        assertThat(BenchReport.tableRow(ours, all)).containsPattern(" 1\\.50 +1\\.0[78] +1\\.05 +80$");
        assertThat(BenchReport.csv(all).split("\n")[0]).contains(",median_round_ratio_to_reference,median_round_ratio_same_speed,");
        assertThat(BenchReport.csv(all).split("\n")[2]).contains(",1.0750,1.0500,");
        // fewer than two rounds at one speed: none
        Measurement flipped = rounds(Scenario.DPDK_TO_OURS, new double[] {22, 8, 9.5, 25, 21, 30},
                new double[] {460, 460, 85, 85, 460, 80});
        assertThat(BenchReport.sameSpeedMedianRatio(flipped, List.of(ref, flipped))).isNaN();
        // the rounds' round trips unknown (a run without pinned CPUs): none either
        Measurement plain = rounds(Scenario.DPDK_TO_OURS, 12, 9, 6, 2);
        assertThat(BenchReport.sameSpeedMedianRatio(plain, List.of(rounds(Scenario.DPDK_TO_DPDK, 10, 5, 8, 4), plain)))
                .isNaN();
    }

    @Test
    void cpuRoundTripIsMeasuredBetweenTwoCpus() {
        if (io.mqvirtio.linux.Affinity.onlineCpus() >= 2) {
            // a cache line there and back: tens to hundreds of ns on real CPUs (a loaded machine: more)
            assertThat(CpuRoundTrip.measure(0, 1, 2000, 3)).isPositive().isLessThan(1e6);
        }
        Measurement m = point(Scenario.OURS_TO_OURS, 64, 1, 1_000_000).withRoundTrip(123.4);
        assertThat(BenchReport.tableRow(m, List.of(m))).endsWith("   123");
        assertThat(BenchReport.csv(List.of(m)).split("\n")[1]).contains(",123.4,");
    }

    @Test
    void figuresAndCsv() {
        Measurement m = point(Scenario.OURS_TO_OURS, 1500, 1, 2_000_000);
        assertThat(m.mpps()).isEqualTo(2.0);
        assertThat(m.gbps()).isEqualTo(24.0);
        assertThat(m.cpuNsPerPacket(Measurement.TX)).isEqualTo(100.0);
        assertThat(m.cpuNsPerPacket(Measurement.RX)).isEqualTo(50.0);
        assertThat(m.cores()).isEqualTo(0.3);
        String csv = BenchReport.csv(List.of(m, Measurement.skipped(Scenario.DPDK_TO_OURS, 64, 1, PACKED_IN_ORDER,
                "DPDK is missing")));
        String[] lines = csv.split("\n");
        assertThat(lines).hasSize(3);
        assertThat(lines[0]).startsWith("scenario,label,frame_bytes,pairs,ring_asked,ring_negotiated,features,status,");
        // VERSION_1 (32), EVENT_IDX (29), IN_ORDER (35)
        assertThat(lines[1]).startsWith("1,ours->ours,1500,1,split+inorder,split+inorder,0x920000000,ok,2.0000,24.0000,2000000,")
                .contains("tx:tx0=100.0;rx:rx0=50.0").endsWith(",\"a note, with a comma\"");
        assertThat(lines[2]).startsWith("2,dpdk->ours,64,1,packed+inorder,,,skipped,,,0,").endsWith("DPDK is missing");
        assertThat(BenchReport.tableRow(m, List.of(m)))
                .containsPattern("1 ours->ours\\s+1500\\s+1 split\\+inorder\\s+2\\.000\\s+24\\.000");
    }
}

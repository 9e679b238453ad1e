package io.mqvirtio.bench;

import static org.assertj.core.api.Assertions.assertThat;

import java.util.List;
import org.junit.jupiter.api.Test;

class BenchReportTest {
    static Measurement point(Scenario s, int size, int pairs, long packets) {
        return new Measurement(s, size, pairs, packets, 1.0, packets, 1.0,
                List.of(new Measurement.ThreadCpu(Measurement.TX, "tx0", packets * 100, packets),
                        new Measurement.ThreadCpu(Measurement.RX, "rx0", packets * 50, packets)),
                Measurement.Status.OK, "a note, with a comma");
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
        assertThat(BenchReport.ratio(ours64, List.of(ours64, Measurement.failed(Scenario.DPDK_TO_DPDK, 64, 1, "x")))).isNaN();
    }

    @Test
    void figuresAndCsv() {
        Measurement m = point(Scenario.OURS_TO_OURS, 1500, 1, 2_000_000);
        assertThat(m.mpps()).isEqualTo(2.0);
        assertThat(m.gbps()).isEqualTo(24.0);
        assertThat(m.cpuNsPerPacket(Measurement.TX)).isEqualTo(100.0);
        assertThat(m.cpuNsPerPacket(Measurement.RX)).isEqualTo(50.0);
        assertThat(m.cores()).isEqualTo(0.3);
        String csv = BenchReport.csv(List.of(m, Measurement.skipped(Scenario.DPDK_TO_OURS, 64, 1, "DPDK is missing")));
        String[] lines = csv.split("\n");
        assertThat(lines).hasSize(3);
        assertThat(lines[1]).startsWith("1,ours->ours,1500,1,ok,2.0000,24.0000,2000000,")
                .contains("tx:tx0=100.0;rx:rx0=50.0").endsWith(",\"a note, with a comma\"");
        assertThat(lines[2]).startsWith("2,dpdk->ours,64,1,skipped,,,0,").endsWith("DPDK is missing");
        assertThat(BenchReport.tableRow(m, List.of(m))).containsPattern("1 ours->ours\\s+1500\\s+1\\s+2\\.000\\s+24\\.000");
    }
}

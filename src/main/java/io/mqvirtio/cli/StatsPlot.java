package io.mqvirtio.cli;

import java.awt.Color;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.jfree.chart.ChartUtils;
import org.jfree.chart.JFreeChart;
import org.jfree.chart.axis.NumberAxis;
import org.jfree.chart.plot.CombinedDomainXYPlot;
import org.jfree.chart.plot.XYPlot;
import org.jfree.chart.renderer.xy.XYLineAndShapeRenderer;
import org.jfree.data.xy.XYSeries;
import org.jfree.data.xy.XYSeriesCollection;

/**
 * {@code mqvirtio stats --plot FILE.png}: packets per second of every queue over the samples given (the last
 * minute), one panel per device, one line per queue (pair and direction), time in seconds before the last sample.
 */
final class StatsPlot {
    /** How far back the plot looks. */
    static final double WINDOW_SECONDS = 60;

    private StatsPlot() {}

    /**
     * Writes the PNG through a temporary file beside it, so that a viewer never sees half of one. That file is made
     * new under a name nobody can guess (O_EXCL): it was {@code FILE.png.tmp}, opened to write through whatever had
     * that name, so in a directory others can write (a shared plots directory) a link planted there made the user's
     * stats command overwrite any file the user may write.
     */
    static void write(List<Stats.Sample> samples, String title, Path png) throws IOException {
        Map<String, XYSeriesCollection> byDevice = new LinkedHashMap<>();
        Map<String, Map<String, XYSeries>> series = new LinkedHashMap<>();
        Stats.Sample last = samples.getLast();
        for (int s = 1; s < samples.size(); s++) {
            Stats.Sample a = samples.get(s - 1);
            Stats.Sample b = samples.get(s);
            double secs = (b.uptimeMillis() - a.uptimeMillis()) / 1000.0;
            double x = (b.uptimeMillis() - last.uptimeMillis()) / 1000.0;
            Map<String, DeviceStats> before = new LinkedHashMap<>();
            a.devices().forEach(d -> before.put(d.name(), d));
            for (DeviceStats d : b.devices()) {
                double[][] rates = Stats.queueRates(before.get(d.name()), d, secs);
                if (rates == null) {
                    continue; // no earlier sample of it, or its counters restarted
                }
                byDevice.computeIfAbsent(d.name(), k -> new XYSeriesCollection());
                Map<String, XYSeries> mine = series.computeIfAbsent(d.name(), k -> new LinkedHashMap<>());
                for (int i = 0; i < d.queues().size(); i++) {
                    String label = d.queues().get(i).label();
                    XYSeries xy = mine.computeIfAbsent(label, k -> {
                        XYSeries fresh = new XYSeries(k, true, false);
                        byDevice.get(d.name()).addSeries(fresh);
                        return fresh;
                    });
                    xy.add(x, rates[i][0]);
                }
            }
        }
        CombinedDomainXYPlot plot = new CombinedDomainXYPlot(new NumberAxis("seconds before " + title));
        plot.setGap(12);
        if (byDevice.isEmpty()) {
            XYPlot empty = new XYPlot(new XYSeriesCollection(), null, new NumberAxis("packets/s (no rates yet)"),
                    new XYLineAndShapeRenderer(true, false));
            plot.add(empty);
        }
        byDevice.forEach((device, data) -> {
            NumberAxis y = new NumberAxis(device + ": packets/s");
            y.setAutoRangeIncludesZero(true);
            y.setRangeType(org.jfree.data.RangeType.POSITIVE);
            y.setAutoRangeMinimumSize(10); // an idle queue: 0..10, not a range of nanopackets
            XYLineAndShapeRenderer r = new XYLineAndShapeRenderer(true, false);
            XYPlot p = new XYPlot(data, null, y, r);
            p.setBackgroundPaint(Color.WHITE);
            p.setRangeGridlinePaint(Color.LIGHT_GRAY);
            p.setDomainGridlinePaint(Color.LIGHT_GRAY);
            plot.add(p);
        });
        ((NumberAxis) plot.getDomainAxis()).setRange(-WINDOW_SECONDS, 0);
        JFreeChart chart = new JFreeChart("mqvirtio: packets per second of every queue, last minute", null, plot, true);
        chart.setBackgroundPaint(Color.WHITE);
        Path tmp = Files.createTempFile(png.toAbsolutePath().getParent(), "." + png.getFileName() + ".", ".tmp",
                PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-r--r--")));
        try {
            ChartUtils.saveChartAsPNG(tmp.toFile(), chart, 1000, 220 + 260 * Math.max(1, byDevice.size()));
            Files.move(tmp, png, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException | RuntimeException e) {
            Files.deleteIfExists(tmp);
            throw e;
        }
    }

    /** The samples of the last {@link #WINDOW_SECONDS} (and the one before, for the first rate). */
    static void trim(List<Stats.Sample> samples) {
        long newest = samples.getLast().uptimeMillis();
        while (samples.size() > 2 && newest - samples.get(1).uptimeMillis() > WINDOW_SECONDS * 1000) {
            samples.removeFirst();
        }
    }
}

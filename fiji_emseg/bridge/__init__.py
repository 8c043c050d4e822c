"""The only Java-facing code: ImageJ1 API through scyjava/JPype (works in Fiji and plain ImageJ).

``jvm`` owns the one JVM; ``imageplus`` converts ImagePlus <-> numpy through java.nio; ``outputs``
and ``results`` build result windows and ResultsTables; ``progress`` drives the Log, status and
progress bars (with cancel); ``commands`` is what the ``fiji_scripts`` call, one function each;
``imagej2_start`` tells SciJava's intermittent start-up race from a Fiji that cannot start.
"""

// The /docs page: ReDoc over our own /openapi.json, with the system's fonts (no web fonts).
(function () {
  var system = '-apple-system, BlinkMacSystemFont, "Segoe UI", "PingFang SC", "Hiragino Sans GB", ' +
    '"Microsoft YaHei", "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif';
  var mono = 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace';
  Redoc.init('/openapi.json', {
    hideDownloadButton: false,
    expandResponses: '200,201',
    theme: {
      typography: {
        fontFamily: system,
        headings: { fontFamily: system },
        code: { fontFamily: mono }
      }
    }
  }, document.getElementById('redoc'));
})();

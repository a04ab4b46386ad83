// Starts Swagger UI on /docs and shows a job's output files (images, video, audio) under the
// JSON response of a run, whether they came back as base64 or as download URLs of this API.
// Served by comfyui-api from its own package: no request leaves the host that serves the page.
(function () {
  "use strict";

  function parseOutputs(content, contentType) {
    if (!contentType || contentType.indexOf("json") < 0 || typeof content !== "string") {
      return [];
    }
    var body;
    try {
      body = JSON.parse(content);
    } catch (e) {
      return [];
    }
    var outputs = body && Array.isArray(body.outputs) ? body.outputs : [];
    return outputs.filter(function (o) {
      return o && (typeof o.base64 === "string" || typeof o.url === "string");
    });
  }

  function mediaTag(contentType, filename) {
    var type = contentType || "";
    var name = (filename || "").toLowerCase();
    if (type.indexOf("image/") === 0 || /\.(png|jpe?g|webp|gif)$/.test(name)) {
      return "img";
    }
    if (type.indexOf("video/") === 0 || /\.(mp4|webm|mov)$/.test(name)) {
      return "video";
    }
    if (type.indexOf("audio/") === 0 || /\.(flac|mp3|wav|ogg|opus)$/.test(name)) {
      return "audio";
    }
    return null;
  }

  function sameOrigin(url) {
    try {
      return new URL(url, window.location.href).origin === window.location.origin;
    } catch (e) {
      return false;
    }
  }

  function OutputsPlugin(system) {
    var React = system.React;
    var h = React.createElement;

    function bearer() {
      var auth = system.authSelectors.authorized();
      var value = auth && auth.getIn(["bearer", "value"]);
      return value || null;
    }

    function Output(props) {
      var o = props.output;
      var state = React.useState({ src: null, error: null });
      var view = state[0];
      var setView = state[1];
      React.useEffect(function () {
        if (typeof o.base64 === "string") {
          setView({ src: "data:" + (o.content_type || "application/octet-stream") + ";base64," + o.base64 });
          return undefined;
        }
        var objectUrl = null;
        var cancelled = false;
        var headers = {};
        var key = bearer();
        // The key goes only to this API itself, never to another origin a URL might name.
        if (key && sameOrigin(o.url)) {
          headers.Authorization = "Bearer " + key;
        }
        fetch(o.url, { headers: headers })
          .then(function (r) {
            if (!r.ok) {
              throw new Error("HTTP " + r.status);
            }
            return r.blob();
          })
          .then(function (blob) {
            if (!cancelled) {
              objectUrl = URL.createObjectURL(blob);
              setView({ src: objectUrl });
            }
          })
          .catch(function (err) {
            if (!cancelled) {
              setView({ error: "cannot load " + o.url + ": " + err.message });
            }
          });
        return function () {
          cancelled = true;
          if (objectUrl) {
            URL.revokeObjectURL(objectUrl);
          }
        };
      }, [o]);
      var tag = mediaTag(o.content_type, o.filename);
      var label = (o.filename || "output") + (o.node ? " (node " + o.node + ")" : "");
      var media;
      if (view.error) {
        media = h("span", { className: "comfyui-output-error" }, view.error);
      } else if (!view.src) {
        media = h("span", null, "loading…");
      } else if (tag === "img") {
        media = h("img", { src: view.src, alt: label, className: "comfyui-output" });
      } else if (tag) {
        media = h(tag, { src: view.src, controls: true, className: "comfyui-output" });
      } else {
        media = h("a", { href: view.src, download: o.filename || "output" }, "download");
      }
      return h("figure", null, media, h("figcaption", null, label));
    }

    return {
      wrapComponents: {
        responseBody: function (Original) {
          return function (props) {
            var outputs = parseOutputs(props.content, props.contentType);
            if (!outputs.length) {
              return h(Original, props);
            }
            return h("div", null, h(Original, props), h("div", { className: "comfyui-outputs" },
              outputs.map(function (o, i) {
                return h(Output, { key: i, output: o });
              })));
          };
        },
      },
    };
  }

  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    presets: [window.SwaggerUIBundle.presets.apis],
    plugins: [OutputsPlugin],
    layout: "BaseLayout",
    deepLinking: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    // Swagger UI's default sends the document to validator.swagger.io for a badge: never.
    validatorUrl: null,
    // Keys stay in this tab's memory, not in the browser's storage.
    persistAuthorization: false,
  });
})();

//! The `torchscript` loader: files written by `torch.jit.save`, loaded on
//! the server's device. Inputs are positional (`"0"`, `"1"`, ...); a single
//! tensor result is `"output"`, a tuple or list `"0"`, `"1"`, ..., a dict
//! with string keys by its keys.

use std::collections::BTreeMap;
use std::path::Path;

use mymps_backend_tch::Converter;
use mymps_core::model::{LoadRequest, Model, ModelLoader};
use mymps_core::{Error, Result};
use mymps_ops::torch_error;
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::convert::{device, download, float_kind, model_error, upload};

/// Loads TorchScript modules.
#[derive(Debug, Clone, Copy, Default)]
pub struct TorchScriptLoader;

struct TorchScriptModel {
    module: CModule,
    device: Device,
    kind: Option<Kind>,
    metadata: BTreeMap<String, String>,
}

impl ModelLoader for TorchScriptLoader {
    fn model_type(&self) -> &str {
        "torchscript"
    }

    fn load(&self, request: &LoadRequest, device_name: &str) -> Result<Box<dyn Model>> {
        if crate::bridge::requested(request)? == Some(crate::bridge::Engine::Python) {
            return Err(model_error(
                "TorchScript files run on the native engine (libtorch's own loader); for the Python engine export the model with torch.export (model_type \"torch_export\")",
            ));
        }
        let path = request.path();
        if !Path::new(path).is_file() {
            return Err(model_error(format!(
                "no TorchScript file at '{path}' (model_path must be a file saved by torch.jit.save, on the server)"
            )));
        }
        let dev = device(device_name)?;
        let kind = float_kind(request.dtype.as_deref())?;
        let mut module = CModule::load_on_device(path, dev).map_err(|e| {
            model_error(format!(
                "cannot load TorchScript file '{path}': {}",
                torch_error(e).message
            ))
        })?;
        module.f_set_eval().map_err(torch_error)?;
        if let Some(k) = kind {
            module.to(dev, k, false);
        }
        let params = module.named_parameters().map_err(torch_error)?;
        let count: usize = params.iter().map(|(_, t)| t.numel()).sum();
        let dtype = params.first().map_or_else(
            || "none".to_owned(),
            |(_, t)| mymps_ops::dtype_of(t.kind()).map_or("other".into(), |d| d.name().to_owned()),
        );
        let metadata = BTreeMap::from([
            ("architecture".to_owned(), "torchscript".to_owned()),
            ("engine".to_owned(), "native".to_owned()),
            ("parameters".to_owned(), count.to_string()),
            ("dtype".to_owned(), dtype),
            ("path".to_owned(), path.to_owned()),
        ]);
        Ok(Box::new(TorchScriptModel {
            module,
            device: dev,
            kind,
            metadata,
        }))
    }
}

impl Model for TorchScriptModel {
    fn forward(
        &self,
        inputs: Vec<(String, mymps_core::Tensor)>,
    ) -> Result<Vec<(String, mymps_core::Tensor)>> {
        let mut positional = Vec::new();
        for (name, t) in inputs {
            match name.parse::<usize>() {
                Ok(i) if name == i.to_string() => positional.push((i, t)),
                _ => {
                    return Err(Error::bad_argument(format!(
                        "TorchScript models take positional inputs \"0\", \"1\", ...; got '{name}'"
                    )));
                }
            }
        }
        positional.sort_by_key(|(i, _)| *i);
        if positional.iter().enumerate().any(|(n, (i, _))| n != *i) {
            return Err(Error::bad_argument(
                "positional inputs must be numbered \"0\", \"1\", ... without gaps",
            ));
        }
        let mut conv = Converter::new(self.device);
        let xs = upload(
            &mut conv,
            positional
                .into_iter()
                .map(|(i, t)| (i.to_string(), t))
                .collect(),
            self.kind,
        )?;
        let args: Vec<IValue> = xs.into_iter().map(|(_, t)| IValue::Tensor(t)).collect();
        let out = tch::no_grad(|| self.module.forward_is(&args))
            .map_err(|e| model_error(torch_error(e).message))?;
        download(&conv, flatten(out)?)
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }
}

fn as_tensor(v: IValue) -> Result<Tensor> {
    match v {
        IValue::Tensor(t) => Ok(t),
        IValue::Double(x) => {
            Tensor::f_scalar_tensor(x, (Kind::Double, Device::Cpu)).map_err(torch_error)
        }
        IValue::Int(i) => {
            Tensor::f_scalar_tensor(i, (Kind::Int64, Device::Cpu)).map_err(torch_error)
        }
        IValue::Bool(b) => {
            Tensor::f_scalar_tensor(b as i64, (Kind::Bool, Device::Cpu)).map_err(torch_error)
        }
        other => Err(model_error(format!(
            "the model returned a {} where a tensor was expected",
            ivalue_kind(&other)
        ))),
    }
}

fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tuple(_) => "tuple",
        IValue::GenericList(_) | IValue::TensorList(_) => "list",
        IValue::GenericDict(_) => "dict",
        IValue::String(_) | IValue::StringList(_) => "string",
        _ => "non-tensor value",
    }
}

/// A forward result as named tensors.
fn flatten(v: IValue) -> Result<Vec<(String, Tensor)>> {
    let numbered = |items: Vec<IValue>| -> Result<Vec<(String, Tensor)>> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| Ok((i.to_string(), as_tensor(v)?)))
            .collect()
    };
    match v {
        IValue::Tuple(items) | IValue::GenericList(items) => numbered(items),
        IValue::TensorList(ts) => Ok(ts
            .into_iter()
            .enumerate()
            .map(|(i, t)| (i.to_string(), t))
            .collect()),
        IValue::GenericDict(pairs) => pairs
            .into_iter()
            .map(|(k, v)| match k {
                IValue::String(k) => Ok((k, as_tensor(v)?)),
                other => Err(model_error(format!(
                    "the model returned a dict with a {} key",
                    ivalue_kind(&other)
                ))),
            })
            .collect(),
        other => Ok(vec![("output".to_owned(), as_tensor(other)?)]),
    }
}

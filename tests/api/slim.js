// What Slim (ImagingDataCommons/slim, src/components/SlideViewer.tsx, src/utils/generateReport.ts and
// src/components/Report.tsx) does with annotations, through the same libraries and calls: dicom-microscopy-viewer,
// dicomweb-client and dcmjs. Loaded by the viewer test page (tests/api/test_viewer.py), which drives it.
//
// - loadReports: QIDO for the study's SR instances, WADO of each Comprehensive 3D SR (the whole Part 10 file),
//   parsed by dcmjs and its TID 1500 measurement groups turned into the viewer's ROIs.
// - loadAnnotationGroups: QIDO for the study's ANN series, their series metadata, added to the viewer as
//   annotation groups and shown: the viewer then fetches each group's coordinates by BulkDataURI.
// - addFinding: what Slim does when a drawn ROI arrives (the finding is added as an evaluation).
// - saveReport: the report Slim generates for the visible ROIs, encoded as Part 10 and stored with STOW-RS.
//   Two defects upstream stop Slim's own save today; they are worked around here, so that what reaches the
//   service is the document Slim means to send:
//   - Slim since July 2025 (c633796) calls write() on the dcmjs document, which has none: the encoding here is
//     the one it used before (a DicomDict with its File Meta);
//   - dcmjs (0.35 as Slim pins it, and 0.41) passes TrackingIdentifier's options to Array's constructor, so the
//     template holds the options object before its two content items, and the measurement group refuses it
//     ("must include a human readable tracking identifier…"): trackingIdentifier() drops that stray element.

const DMV = window.dicomMicroscopyViewer
const { sr, data } = window.dcmjs

const FINDING = new sr.coding.CodedConcept({ value: '121071', schemeDesignator: 'DCM', meaning: 'Finding' })
const TISSUE = new sr.coding.CodedConcept({ value: '85756007', schemeDesignator: 'SCT', meaning: 'Tissue' })
const STYLE = { stroke: { color: [0, 255, 0, 1], width: 4 }, fill: { color: [0, 255, 0, 0.2] } }
const GROUP_COLOURS = { POINT: [0, 255, 255], POLYGON: [0, 255, 0] }
const COMPREHENSIVE_3D_SR = '1.2.840.10008.5.1.4.1.1.88.34'

function named(content, value, scheme) {
  return (content || []).filter((item) => {
    const concept = item.ConceptNameCodeSequence[0]
    return concept.CodeValue === value && concept.CodingSchemeDesignator === scheme
  })
}

/** Report.tsx getROIs: TID 1500 → Imaging Measurements → TID 1410 groups → ROIs. */
function reportROIs(report) {
  const [measurements] = named(report.ContentSequence, '126010', 'DCM')
  if (measurements === undefined) return []
  return named(measurements.ContentSequence, '125007', 'DCM').map((group) => {
    const [tracking] = named(group.ContentSequence, '112040', 'DCM')
    const [region] = named(group.ContentSequence, '111030', 'DCM')
    const coordinates = []
    for (let i = 0; i < region.GraphicData.length; i += 3) coordinates.push(region.GraphicData.slice(i, i + 3))
    const scoord3d = new DMV.scoord3d.Polygon({ frameOfReferenceUID: region.ReferencedFrameOfReferenceUID, coordinates })
    const evaluations = (group.ContentSequence || []).filter((item) => item.ValueType === 'CODE')
    return new DMV.roi.ROI({ scoord3d, uid: data.DicomMetaDictionary.uid(),
                             properties: { trackingUID: tracking.UID, observerType: 'Person', evaluations } })
  })
}

export async function loadReports(client, viewer, study, frameOfReferenceUID) {
  const found = (await client.searchForInstances({ studyInstanceUID: study, queryParams: { Modality: 'SR' } })) || []
  let added = 0
  for (const match of found) {
    const { dataset: instance } = DMV.metadata.formatMetadata(match)
    if (instance.SOPClassUID !== COMPREHENSIVE_3D_SR) continue
    const part10 = await client.retrieveInstance({ studyInstanceUID: study, seriesInstanceUID: instance.SeriesInstanceUID,
                                                   sopInstanceUID: instance.SOPInstanceUID })
    const file = data.DicomMessage.readFile(part10)
    const { dataset: report } = DMV.metadata.formatMetadata(file.dict)
    for (const roi of reportROIs(report)) {
      if (roi.scoord3d.frameOfReferenceUID !== frameOfReferenceUID) continue
      viewer.addROI(roi, STYLE)
      added += 1
    }
  }
  return added
}

export async function loadAnnotationGroups(client, viewer, study) {
  const found = (await client.searchForSeries({ studyInstanceUID: study, queryParams: { Modality: 'ANN' } })) || []
  const groups = []
  for (const match of found) {
    const { dataset: series } = DMV.metadata.formatMetadata(match)
    const metadata = await client.retrieveSeriesMetadata({ studyInstanceUID: study,
                                                           seriesInstanceUID: series.SeriesInstanceUID })
    for (const item of metadata) {
      const annotations = new DMV.metadata.MicroscopyBulkSimpleAnnotations({ metadata: item })
      viewer.addAnnotationGroups(annotations)
      for (const group of annotations.AnnotationGroupSequence) {
        viewer.showAnnotationGroup(group.AnnotationGroupUID, { color: GROUP_COLOURS[group.GraphicType] })
        groups.push({ uid: group.AnnotationGroupUID, label: group.AnnotationGroupLabel,
                      graphicType: group.GraphicType, count: Number(group.NumberOfAnnotations) })
      }
    }
  }
  return groups
}

/** SlideViewer.tsx onRoiDrawn: the selected finding becomes the ROI's evaluation, and the ROI is styled. */
export function addFinding(viewer, roi) {
  roi.addEvaluation(new sr.valueTypes.CodeContentItem({ name: FINDING, value: TISSUE, relationshipType: 'CONTAINS' }))
  viewer.addROI(roi, STYLE)
}

/** A TID 4108 tracking identifier of its two content items (see the dcmjs defect above). */
function trackingIdentifier(options) {
  const template = new sr.templates.TrackingIdentifier(options)
  if (template.length === 3 && template[0] === options) template.shift()
  return template
}

/** generateReport.ts: a Comprehensive 3D SR holding a TID 1500 measurement report of the ROIs. */
function generateReport(rois, refImage) {
  const specimen = refImage.SpecimenDescriptionSequence[0]
  const person = (value, meaning) => new sr.coding.CodedConcept({ value, schemeDesignator: 'DCM', meaning })
  const observationContext = new sr.templates.ObservationContext({
    observerPersonContext: new sr.templates.ObserverContext({
      observerType: person('121006', 'Person'),
      observerIdentifyingAttributes: new sr.templates.PersonObserverIdentifyingAttributes({ name: 'ANONYMOUS' }),
    }),
    observerDeviceContext: new sr.templates.ObserverContext({
      observerType: person('121007', 'Device'),
      observerIdentifyingAttributes: new sr.templates.DeviceObserverIdentifyingAttributes({
        uid: '2.25.999', manufacturerName: 'MGH Computational Pathology', modelName: 'Slim' }),
    }),
    subjectContext: new sr.templates.SubjectContext({
      subjectClass: person('121027', 'Specimen'),
      subjectClassSpecificContext: new sr.templates.SubjectContextSpecimen({
        uid: specimen.SpecimenUID, identifier: specimen.SpecimenIdentifier,
        containerIdentifier: refImage.ContainerIdentifier }),
    }),
  })
  const imagingMeasurements = []
  rois.forEach((roi, i) => {
    const finding = roi.evaluations.find((item) => item.ConceptNameCodeSequence[0].CodeValue === '121071')
    const group = new sr.templates.PlanarROIMeasurementsAndQualitativeEvaluations({
      trackingIdentifier: trackingIdentifier({ uid: roi.properties.trackingUID || roi.uid,
                                               identifier: `ROI #${i + 1}` }),
      referencedRegion: new sr.contentItems.ImageRegion3D({ graphicType: roi.scoord3d.graphicType,
        graphicData: roi.scoord3d.graphicData, frameOfReferenceUID: roi.scoord3d.frameOfReferenceUID }),
      findingType: new sr.coding.CodedConcept({ value: finding.ConceptCodeSequence[0].CodeValue,
        schemeDesignator: finding.ConceptCodeSequence[0].CodingSchemeDesignator,
        meaning: finding.ConceptCodeSequence[0].CodeMeaning }),
      qualitativeEvaluations: roi.evaluations.filter((item) => item.ConceptNameCodeSequence[0].CodeValue !== '121071'),
      measurements: roi.measurements,
    })
    group[0].ContentTemplateSequence = [{ MappingResource: 'DCMR', TemplateIdentifier: '1410' }]
    imagingMeasurements.push(...group)
  })
  const measurementReport = new sr.templates.MeasurementReport({
    languageOfContentItemAndDescendants: new sr.templates.LanguageOfContentItemAndDescendants({}),
    observationContext,
    procedureReported: new sr.coding.CodedConcept({ value: '112703', schemeDesignator: 'DCM',
                                                    meaning: 'Whole Slide Imaging' }),
    imagingMeasurements,
  })
  return new sr.documents.Comprehensive3DSR({
    content: measurementReport[0], evidence: [refImage], seriesInstanceUID: data.DicomMetaDictionary.uid(),
    seriesNumber: 1, seriesDescription: 'Annotation', sopInstanceUID: data.DicomMetaDictionary.uid(),
    instanceNumber: 1, manufacturer: 'MGH Computational Pathology', previousVersions: undefined,
  })
}

export async function saveReport(client, viewer) {
  const rois = viewer.getAllROIs()
  const opticalPaths = viewer.getAllOpticalPaths()
  const metadata = viewer.getOpticalPathMetadata(opticalPaths[0].identifier)
  const dataset = generateReport(rois, metadata[metadata.length - 1])
  const fileMeta = {
    '00020001': { Value: [new Uint8Array([0, 1]).buffer], vr: 'OB' },
    '00020002': { Value: [dataset.SOPClassUID], vr: 'UI' },
    '00020003': { Value: [dataset.SOPInstanceUID], vr: 'UI' },
    '00020010': { Value: ['1.2.840.10008.1.2.1'], vr: 'UI' },
    '00020012': { Value: ['2.25.999'], vr: 'UI' },
  }
  const writer = new data.DicomDict(fileMeta)
  writer.dict = data.DicomMetaDictionary.denaturalizeDataset(dataset)
  await client.storeInstances({ datasets: [writer.write()] })
  return { sopInstanceUID: dataset.SOPInstanceUID, seriesInstanceUID: dataset.SeriesInstanceUID, rois: rois.length }
}
